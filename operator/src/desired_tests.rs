//! Behaviour tests of the pure planner: upstream's "Manager LB" / "Manager VM" scenarios (the unit tests in
//! https://github.com/Azure/kube-egress-gateway/tree/main/controllers/manager),
//! the coalescing goal, and convergence (apply the plan to an in-memory Azure, plan again: nothing to do).

use super::*;

const POOL: &str = "pool-uid";
const SUBNET: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/gw";
const NODE_SUBNET: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/nodes";
const BYO: &str = "/subscriptions/00000000-0000-0000-0000-0000000000b0/resourceGroups/other/providers/Microsoft.Network/publicIPPrefixes/mine";

fn env() -> Env {
    Env {
        lb_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/kubeegressgateway-ilb".into(),
        resource_group_id: "/subscriptions/s/resourceGroups/rg".into(),
        frontend_subnet_id: SUBNET.into(),
        probe_port: 8082,
    }
}

fn vmss_pool() -> Pool {
    Pool {
        uid: POOL.into(),
        kind: PoolKind::Vmss,
        prefix_len: 31,
    }
}

fn vm_pool() -> Pool {
    Pool {
        kind: PoolKind::Vm,
        ..vmss_pool()
    }
}

fn cfg(uid: &str, egress: Egress) -> Config {
    Config {
        uid: uid.into(),
        egress,
        deleting: false,
        kept: false,
        adopted: None,
        status_port: None,
    }
}

fn deleting(uid: &str, egress: Egress) -> Config {
    Config {
        deleting: true,
        ..cfg(uid, egress)
    }
}

fn primary_nic() -> Nic {
    Nic {
        ip_configs: vec![IpConfig {
            name: "ipconfig1".into(),
            primary: true,
            ipv4: true,
            subnet_id: Some(NODE_SUBNET.into()),
            ..IpConfig::default()
        }],
    }
}

fn vmss_state(instances: usize) -> AzureState {
    AzureState {
        vmss_model: Some(primary_nic()),
        instances: (0..instances)
            .map(|i| Instance {
                instance_id: i.to_string(),
                computer_name: format!("gw{i:06}"),
                provisioning_state: "Succeeded".into(),
                nic: Some(primary_nic()),
                addresses: NicAddresses {
                    primary_ip: Some(format!("10.0.0.{}", 4 + i)),
                    by_ip_config: BTreeMap::new(),
                },
            })
            .collect(),
        ..AzureState::default()
    }
}

fn vm_state(nics: usize) -> AzureState {
    AzureState {
        vm_nics: (0..nics)
            .map(|i| VmNic {
                name: format!("aks-gwpool-{i}-nic"),
                provisioning_state: "Succeeded".into(),
                nic: primary_nic(),
                addresses: NicAddresses {
                    primary_ip: Some(format!("10.0.0.{}", 4 + i)),
                    by_ip_config: BTreeMap::new(),
                },
                vm_id: None,
            })
            .collect(),
        ..AzureState::default()
    }
}

/// What Azure does with the writes: allocate addresses, store models.
fn apply(state: &mut AzureState, plan: &PoolPlan) {
    let mut next_ip = 100;
    for p in &plan.prefixes_to_create {
        state.managed_prefixes.insert(
            p.name.to_ascii_lowercase(),
            PrefixState {
                prefix_len: Some(p.prefix_len),
                cidr: Some(format!(
                    "20.0.{}.0/{}",
                    state.managed_prefixes.len(),
                    p.prefix_len
                )),
                public_ip_ids: vec![],
                failed: false,
            },
        );
    }
    for pip in &plan.public_ips_to_create {
        // Tagged with the pool, as the applier creates them.
        state.public_ips.insert(
            pip.name.to_ascii_lowercase(),
            PublicIp {
                pool: Some(POOL.into()),
                ..PublicIp::of_prefix(&pip.prefix_id)
            },
        );
        if let Some(p) = state
            .managed_prefixes
            .get_mut(&last_segment(&pip.prefix_id).to_ascii_lowercase())
        {
            p.public_ip_ids.push(env().public_ip_id(&pip.name));
        }
    }
    for pip in &plan.public_ips_to_tag {
        if let Some(ip) = state.public_ips.get_mut(&pip.name.to_ascii_lowercase()) {
            ip.pool = Some(POOL.into());
        }
    }
    match &plan.lb {
        LbWrite::Keep => {}
        LbWrite::Delete => state.lb = None,
        LbWrite::Put { lb, .. } => {
            let mut lb = lb.clone();
            for (i, f) in lb.frontends.iter_mut().enumerate() {
                if f.private_ip.is_none() {
                    f.private_ip = Some(format!("10.1.0.{}", 4 + i));
                }
            }
            state.lb = Some(lb);
        }
    }
    if let Some(model) = &plan.vmss_model {
        state.vmss_model = Some(model.clone());
    }
    for u in &plan.nic_updates {
        let (nic, addresses, prov) = match state.instances.iter_mut().find(|i| i.instance_id == u.target) {
            Some(i) => (
                i.nic.get_or_insert_with(Nic::default),
                &mut i.addresses,
                &mut i.provisioning_state,
            ),
            None => {
                let n = state
                    .vm_nics
                    .iter_mut()
                    .find(|n| n.name == u.target)
                    .expect("update targets a known NIC");
                (&mut n.nic, &mut n.addresses, &mut n.provisioning_state)
            }
        };
        *nic = u.nic.clone();
        *prov = "Succeeded".into();
        addresses
            .by_ip_config
            .retain(|k, _| u.nic.ip_configs.iter().any(|c| c.name.to_ascii_lowercase() == *k));
        for c in u.nic.ip_configs.iter().filter(|c| !c.primary) {
            addresses
                .by_ip_config
                .entry(c.name.to_ascii_lowercase())
                .or_insert_with(|| {
                    next_ip += 1;
                    format!("10.0.1.{next_ip}")
                });
        }
    }
    for name in &plan.public_ips_to_delete {
        state.public_ips.remove(name);
    }
    for name in &plan.prefixes_to_delete {
        state.managed_prefixes.remove(&name.to_ascii_lowercase());
    }
}

fn plan(pool: &Pool, configs: &[Config], state: &AzureState) -> PoolPlan {
    plan_pool(pool, configs, state, &env()).expect("pool is plannable")
}

/// Plans, applies, and checks the next plan is empty; returns the first plan.
fn converge(pool: &Pool, configs: &[Config], state: &mut AzureState) -> PoolPlan {
    let first = plan(pool, configs, state);
    apply(state, &first);
    let second = plan(pool, configs, state);
    assert!(second.is_noop(), "second plan must be empty, got {second:#?}");
    first
}

fn lb_of(plan: &PoolPlan) -> &Lb {
    match &plan.lb {
        LbWrite::Put { lb, .. } => lb,
        other => panic!("expected a load-balancer PUT, got {other:?}"),
    }
}

fn rule<'a>(lb: &'a Lb, name: &str) -> &'a LbRule {
    lb.rules.iter().find(|r| r.name == name).expect("rule exists")
}

fn existing_lb_with_rule(uid: &str, port: i32) -> Lb {
    Lb {
        frontends: vec![Frontend {
            name: POOL.into(),
            private_ip: Some("10.1.0.4".into()),
            subnet_id: Some(SUBNET.into()),
        }],
        backends: vec![POOL.into()],
        rules: vec![LbRule {
            name: uid.into(),
            protocol: "Udp".into(),
            floating_ip: true,
            frontend: Some(POOL.into()),
            backend: Some(POOL.into()),
            probe: Some(uid.into()),
            frontend_port: Some(port),
            backend_port: Some(port),
        }],
        probes: vec![expected_probe(uid, &env())],
        failed: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Load balancer (upstream "Manager LB")
// ---------------------------------------------------------------------------------------------

#[test]
fn new_configuration_creates_frontend_backend_rule_and_probe() {
    let mut state = vmss_state(2);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let lb = lb_of(&p);
    assert_eq!(
        lb.frontends,
        vec![Frontend {
            name: POOL.into(),
            private_ip: None,
            subnet_id: Some(SUBNET.into())
        }]
    );
    assert_eq!(lb.backends, vec![POOL.to_string()]);
    assert_eq!(
        *rule(lb, "a"),
        LbRule {
            name: "a".into(),
            protocol: "Udp".into(),
            floating_ip: true,
            frontend: Some(POOL.into()),
            backend: Some(POOL.into()),
            probe: Some("a".into()),
            frontend_port: Some(6000),
            backend_port: Some(6000),
        }
    );
    assert_eq!(
        lb.probes,
        vec![Probe {
            name: "a".into(),
            protocol: "Http".into(),
            port: 8082,
            path: Some("/gw/a".into()),
            interval: Some(5),
            threshold: Some(1),
        }]
    );
    assert!(matches!(
        p.lb,
        LbWrite::Put {
            after_nics: false,
            ..
        }
    ));
    assert_eq!(p.ports.get("a"), Some(&6000));
}

#[test]
fn no_put_when_the_load_balancer_is_already_as_expected() {
    let mut state = vmss_state(1);
    state.lb = Some(existing_lb_with_rule("a", 6000));
    let p = plan(&vmss_pool(), &[cfg("a", Egress::Private)], &state);
    assert_eq!(p.lb, LbWrite::Keep);
    assert_eq!(p.ports.get("a"), Some(&6000));
}

#[test]
fn a_failed_load_balancer_or_prefix_is_written_again_keeping_the_port() {
    let mut state = vmss_state(1);
    let mut lb = existing_lb_with_rule("a", 6000);
    lb.failed = true;
    state.lb = Some(lb);
    let p = plan(&vmss_pool(), &[cfg("a", Egress::Private)], &state);
    match &p.lb {
        LbWrite::Put { lb, .. } => {
            assert!(!lb.failed);
            assert_eq!(rule(lb, "a").frontend_port, Some(6000), "same content, same port");
        }
        other => panic!("a Failed load balancer is PUT again, got {other:?}"),
    }

    let mut state = vmss_state(1);
    let mut first = converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    assert_eq!(first.prefixes_to_create.len(), 1);
    let name = first.prefixes_to_create.remove(0).name.to_ascii_lowercase();
    if let Some(prefix) = state.managed_prefixes.get_mut(&name) {
        prefix.failed = true;
    }
    let again = plan(&vmss_pool(), &[cfg("a", Egress::Managed)], &state);
    assert_eq!(
        again
            .prefixes_to_create
            .iter()
            .map(|p| p.name.to_ascii_lowercase())
            .collect::<Vec<_>>(),
        [name],
        "a Failed prefix is PUT again"
    );
}

#[test]
fn names_and_ids_compare_case_insensitively_like_arm() {
    let mut state = vmss_state(1);
    let mut lb = existing_lb_with_rule("a", 6000);
    lb.rules[0].frontend = Some(POOL.to_uppercase());
    lb.rules[0].protocol = "UDP".into();
    state.lb = Some(lb);
    let p = plan(&vmss_pool(), &[cfg("a", Egress::Private)], &state);
    assert_eq!(p.lb, LbWrite::Keep);
}

#[test]
fn an_existing_rule_keeps_its_port_and_new_rules_take_the_lowest_free_one() {
    // (port of a's existing rule, port the new rule of b gets)
    for (existing, new) in [(6000_u16, 6001_u16), (6005, 6000)] {
        let mut state = vmss_state(1);
        state.lb = Some(existing_lb_with_rule("a", i32::from(existing)));
        let p = plan(
            &vmss_pool(),
            &[cfg("a", Egress::Private), cfg("b", Egress::Private)],
            &state,
        );
        assert_eq!(
            rule(lb_of(&p), "b").frontend_port,
            Some(i32::from(new)),
            "a on {existing}"
        );
        assert_eq!(
            p.ports,
            BTreeMap::from([("a".into(), existing), ("b".into(), new)]),
            "a on {existing}"
        );
    }
}

#[test]
fn a_rule_with_the_wrong_protocol_or_floating_ip_is_replaced() {
    for mutate in [
        (|r: &mut LbRule| r.protocol = "Tcp".into()) as fn(&mut LbRule),
        |r| r.floating_ip = false,
        |r| r.probe = Some("other".into()),
        |r| r.backend_port = Some(6100),
        |r| {
            r.frontend_port = Some(7000);
            r.backend_port = Some(7000);
        },
    ] {
        let mut state = vmss_state(1);
        let mut lb = existing_lb_with_rule("a", 6003);
        mutate(&mut lb.rules[0]);
        state.lb = Some(lb);
        let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
        let r = rule(lb_of(&p), "a");
        assert!(rule_is_expected(r, POOL, "a"), "{r:?}");
        assert_eq!(
            r.frontend_port,
            Some(6000),
            "a replaced rule takes the lowest free port"
        );
        assert_eq!(lb_of(&p).rules.len(), 1);
    }
}

#[test]
fn a_wrong_probe_is_replaced_and_the_rule_keeps_its_port() {
    for mutate in [
        (|p: &mut Probe| p.path = Some("/gw/other".into())) as fn(&mut Probe),
        |p| p.protocol = "Tcp".into(),
        |p| p.port = 80,
        |p| p.interval = Some(15),
        |p| p.threshold = Some(2),
    ] {
        let mut state = vmss_state(1);
        let mut lb = existing_lb_with_rule("a", 6003);
        mutate(&mut lb.probes[0]);
        state.lb = Some(lb);
        let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
        assert_eq!(lb_of(&p).probes, vec![expected_probe("a", &env())]);
        assert_eq!(p.ports.get("a"), Some(&6003));
    }
}

#[test]
fn all_ports_in_use_is_reported_for_the_configuration_that_did_not_fit() {
    let configs: Vec<Config> = (0..1001)
        .map(|i| cfg(&format!("c{i:04}"), Egress::Private))
        .collect();
    let p = plan(&vmss_pool(), &configs, &vmss_state(1));
    assert_eq!(p.ports.len(), 1000);
    assert_eq!(
        p.problems.get("c1000"),
        Some(&ConfigProblem::NoAvailablePorts(1000))
    );
    assert!(
        p.problems["c1000"]
            .to_string()
            .starts_with("selectPortForLBRule: No available ports")
    );
    assert!(!lb_of(&p).probes.iter().any(|pr| pr.name == "c1000"));
    let model = p.vmss_model.expect("model changes");
    assert!(!model.ip_configs.iter().any(|c| c.name == "egressgateway-c1000"));
}

#[test]
fn deleting_the_only_configuration_deletes_the_load_balancer_after_the_nics() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    // ARM lists the instances' addresses on the prefix; they go with the ipConfigurations, not by DELETE.
    state
        .managed_prefixes
        .get_mut("egressgateway-a")
        .expect("prefix")
        .public_ip_ids
        .push("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/0/networkInterfaces/n/ipConfigurations/egressgateway-a/publicIPAddresses/egressgateway-a".into());
    let p = converge(&vmss_pool(), &[deleting("a", Egress::Managed)], &mut state);
    assert_eq!(p.lb, LbWrite::Delete);
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    assert!(p.public_ips_to_delete.is_empty());
    let model = p.vmss_model.expect("model cleaned");
    assert_eq!(model, primary_nic(), "ipConfig and backend pool gone");
    assert_eq!(p.nic_updates.len(), 2);
    assert!(state.lb.is_none() && state.managed_prefixes.is_empty());
}

#[test]
fn deleting_one_of_several_configurations_removes_only_its_rule_and_probe() {
    let mut state = vmss_state(1);
    let both = [cfg("a", Egress::Private), cfg("b", Egress::Private)];
    converge(&vmss_pool(), &both, &mut state);
    let p = converge(
        &vmss_pool(),
        &[cfg("a", Egress::Private), deleting("b", Egress::Private)],
        &mut state,
    );
    let lb = lb_of(&p);
    assert!(matches!(
        p.lb,
        LbWrite::Put {
            after_nics: false,
            ..
        }
    ));
    assert_eq!(lb.rules.len(), 1);
    assert_eq!(lb.probes.len(), 1);
    assert_eq!(lb.frontends.len(), 1);
    assert_eq!(lb.backends.len(), 1);
    assert_eq!(p.ports.get("a"), Some(&6000), "the remaining rule keeps its port");
}

#[test]
fn other_pools_on_the_same_load_balancer_are_left_untouched() {
    let mut state = vmss_state(1);
    let mut other = existing_lb_with_rule("x", 6000);
    for f in &mut other.frontends {
        f.name = "other-pool".into();
    }
    other.backends = vec!["other-pool".into()];
    other.rules[0].frontend = Some("other-pool".into());
    other.rules[0].backend = Some("other-pool".into());
    state.lb = Some(other.clone());
    converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    let p = converge(&vmss_pool(), &[deleting("a", Egress::Private)], &mut state);
    assert_eq!(
        p.lb,
        LbWrite::Put {
            lb: other.clone(),
            after_nics: true
        }
    );
    assert_eq!(state.lb, Some(other));
}

#[test]
fn leaked_rules_on_the_pools_backend_are_removed() {
    let mut state = vmss_state(1);
    let mut lb = existing_lb_with_rule("gone", 6000);
    lb.rules.extend(existing_lb_with_rule("a", 6001).rules);
    lb.probes.extend(existing_lb_with_rule("a", 6001).probes);
    state.lb = Some(lb);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    let lb = lb_of(&p);
    assert_eq!(
        lb.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(
        lb.probes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(p.ports.get("a"), Some(&6001));
}

#[test]
fn nothing_to_do_for_an_unknown_pool_without_configurations() {
    let p = plan(&vmss_pool(), &[], &vmss_state(2));
    assert!(p.is_noop(), "{p:?}");
    let p = plan(
        &vmss_pool(),
        &[deleting("a", Egress::Managed)],
        &AzureState::default(),
    );
    assert!(p.is_noop(), "deleting on a vanished scale set: {p:?}");
}

// ---------------------------------------------------------------------------------------------
// VMSS (upstream "Manager VM")
// ---------------------------------------------------------------------------------------------

#[test]
fn vmss_model_and_instances_get_the_ip_config_and_the_backend_pool() {
    let mut state = vmss_state(2);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let model = p.vmss_model.expect("model PUT");
    let backend = env().backend_pool_id(POOL);
    assert_eq!(model.ip_configs[0].backend_pools, vec![backend]);
    assert_eq!(
        model.ip_configs[1],
        IpConfig {
            name: "egressgateway-a".into(),
            primary: false,
            ipv4: true,
            subnet_id: Some(NODE_SUBNET.into()),
            public_ip_config: Some((
                "egressgateway-a".into(),
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/egressgateway-a".into()
            )),
            public_ip_address_id: None,
            backend_pools: vec![],
        }
    );
    assert_eq!(
        p.prefixes_to_create,
        vec![PrefixCreate {
            name: "egressgateway-a".into(),
            prefix_len: 31
        }]
    );
    assert_eq!(
        p.nic_updates
            .iter()
            .map(|u| (u.target.as_str(), u.reason))
            .collect::<Vec<_>>(),
        [("0", UpdateReason::Differs), ("1", UpdateReason::Differs)]
    );
    let facts = config_facts(
        &vmss_pool(),
        &cfg("a", Egress::Managed),
        &state,
        &p.ports,
        Some("20.0.0.0/31"),
    );
    assert_eq!(facts.frontend_ip.as_deref(), Some("10.1.0.4"));
    assert_eq!(facts.port, Some(6000));
    assert_eq!(facts.egress_ip_prefix.as_deref(), Some("20.0.0.0/31"));
    assert_eq!(facts.vm_profiles.len(), 2);
    assert!(facts.is_complete());
}

#[test]
fn an_unexpected_ip_config_is_fixed_in_place() {
    let mut state = vmss_state(1);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let model = state.vmss_model.as_mut().expect("model");
    model.ip_configs[1].subnet_id = Some(SUBNET.into());
    model.ip_configs[1].public_ip_config = None;
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let fixed = p.vmss_model.expect("model fixed");
    assert_eq!(fixed.ip_configs[1].subnet_id.as_deref(), Some(NODE_SUBNET));
    assert!(fixed.ip_configs[1].public_ip_config.is_some());
    assert!(p.nic_updates.is_empty(), "instances were already right");
}

#[test]
fn a_failed_instance_is_updated_even_when_its_model_is_right() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    state.instances[1].provisioning_state = "Failed".into();
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    assert_eq!(p.write_count(), 1);
    assert_eq!(p.nic_updates[0].target, "1");
    assert_eq!(p.nic_updates[0].reason, UpdateReason::Failed);
}

#[test]
fn an_instance_missing_its_secondary_ip_is_updated() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    state.instances[0].addresses.by_ip_config.clear();
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    assert_eq!(
        p.nic_updates
            .iter()
            .map(|u| (u.target.as_str(), u.reason))
            .collect::<Vec<_>>(),
        [("0", UpdateReason::MissingAddresses)]
    );
}

/// The facts of private configuration `a` on the scale-set pool after `plan`.
fn private_facts(state: &AzureState, plan: &PoolPlan) -> ConfigFacts {
    config_facts(&vmss_pool(), &cfg("a", Egress::Private), state, &plan.ports, None)
}

/// The secondary (egress) IPs the facts list, in node order.
fn secondary_ips(facts: &ConfigFacts) -> Vec<&str> {
    facts
        .vm_profiles
        .iter()
        .map(|v| v.secondary_ip.as_str())
        .collect()
}

#[test]
fn private_mode_has_no_public_ip_configuration_and_reports_private_ips() {
    let mut state = vmss_state(2);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    assert!(p.prefixes_to_create.is_empty());
    let model = p.vmss_model.as_ref().expect("model");
    assert_eq!(model.ip_configs[1].public_ip_config, None);
    let facts = private_facts(&state, &p);
    let ips = secondary_ips(&facts);
    assert_eq!(facts.egress_ip_prefix, Some(ips.join(",")));
    assert_eq!(ips.len(), 2);
    assert_eq!(facts.vm_profiles[0].node_name, "gw000000");
    assert_eq!(facts.vm_profiles[0].primary_ip, "10.0.0.4");
}

#[test]
fn private_mode_egress_prefix_lists_the_addresses_that_exist_and_names_the_instances_without() {
    let mut state = vmss_state(3);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    state.instances[1].addresses.by_ip_config.clear();
    let facts = private_facts(&state, &p);
    let ips = secondary_ips(&facts);
    assert_eq!(ips.len(), 2);
    assert_eq!(facts.egress_ip_prefix, Some(ips.join(",")));
    assert!(
        facts.is_complete(),
        "one instance without its address keeps the configuration usable"
    );
    assert_eq!(facts.without_address, ["gw000001"]);

    // None has its address: nothing to list yet.
    for i in &mut state.instances {
        i.addresses.by_ip_config.clear();
    }
    let facts = private_facts(&state, &p);
    assert_eq!(facts.egress_ip_prefix, None);
    assert!(!facts.is_complete());
    assert_eq!(facts.without_address, ["gw000000", "gw000001", "gw000002"]);
}

#[test]
fn switching_public_to_private_removes_the_public_ip_config_and_deletes_the_managed_prefix() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    assert_eq!(p.vmss_model.expect("model").ip_configs[1].public_ip_config, None);
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    assert_eq!(
        p.lb,
        LbWrite::Keep,
        "the load balancer does not care about the egress mode"
    );
}

#[test]
fn switching_managed_to_byo_points_at_the_users_prefix_and_deletes_the_managed_one() {
    let mut state = vmss_state(1);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let byo = Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(BYO).expect("a prefix ID"),
    };
    let p = converge(&vmss_pool(), &[cfg("a", byo.clone())], &mut state);
    let model = p.vmss_model.expect("model");
    assert_eq!(
        model.ip_configs[1].public_ip_config,
        Some(("egressgateway-a".into(), BYO.into()))
    );
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    assert!(p.prefixes_to_create.is_empty());
    // and back
    let p = converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    assert_eq!(p.prefixes_to_create.len(), 1);
    assert!(p.prefixes_to_delete.is_empty());
}

#[test]
fn a_managed_prefix_of_the_wrong_length_blocks_only_its_configuration() {
    let mut state = vmss_state(1);
    state.managed_prefixes.insert(
        "egressgateway-a".into(),
        PrefixState {
            prefix_len: Some(30),
            cidr: Some("20.0.0.0/30".into()),
            public_ip_ids: vec![],
            failed: false,
        },
    );
    let p = converge(
        &vmss_pool(),
        &[cfg("a", Egress::Managed), cfg("b", Egress::Managed)],
        &mut state,
    );
    assert_eq!(
        p.problems.get("a"),
        Some(&ConfigProblem::PrefixSizeMismatch {
            found: 30,
            required: 31
        })
    );
    assert_eq!(p.ports.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(
        p.prefixes_to_create
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["egressgateway-b"]
    );
    assert!(
        p.prefixes_to_delete.is_empty(),
        "never delete a prefix the configuration still names"
    );
}

#[test]
fn deleting_when_the_scale_set_is_gone_still_cleans_the_load_balancer_and_prefix() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    state.vmss_model = None;
    state.instances.clear();
    let p = converge(&vmss_pool(), &[deleting("a", Egress::Managed)], &mut state);
    assert_eq!(p.lb, LbWrite::Delete);
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    assert!(state.lb.is_none() && state.managed_prefixes.is_empty());
}

#[test]
fn a_scale_set_without_network_profile_or_primary_ip_config_is_a_pool_problem() {
    let mut state = vmss_state(1);
    state.vmss_model = None;
    assert_eq!(
        plan_pool(&vmss_pool(), &[cfg("a", Egress::Private)], &state, &env()),
        Err(PoolProblem::NoNetworkProfile)
    );
    let mut state = vmss_state(1);
    let mut nic = primary_nic();
    nic.ip_configs[0].primary = false;
    nic.ip_configs.push(IpConfig {
        name: "second".into(),
        ..IpConfig::default()
    });
    state.vmss_model = Some(nic);
    assert_eq!(
        plan_pool(&vmss_pool(), &[cfg("a", Egress::Private)], &state, &env()),
        Err(PoolProblem::NoPrimaryIpConfig("vmss".into()))
    );
    let mut state = vmss_state(1);
    state.instances[0].nic = None;
    let err = plan_pool(&vmss_pool(), &[cfg("a", Egress::Private)], &state, &env()).expect_err("no NIC");
    assert_eq!(
        err.to_string(),
        "vmss vm(gw000000) primary network interface not found"
    );
}

#[test]
fn foreign_ip_configs_and_backend_pools_are_kept() {
    let mut state = vmss_state(1);
    let mut nic = primary_nic();
    nic.ip_configs[0]
        .backend_pools
        .push("/subscriptions/s/x/backendAddressPools/kubernetes".into());
    nic.ip_configs.push(IpConfig {
        name: "users-own".into(),
        ipv4: true,
        ..IpConfig::default()
    });
    state.vmss_model = Some(nic.clone());
    converge(&vmss_pool(), &[cfg("a", Egress::Private)], &mut state);
    let p = converge(&vmss_pool(), &[deleting("a", Egress::Private)], &mut state);
    assert_eq!(p.vmss_model, Some(nic));
}

// ---------------------------------------------------------------------------------------------
// Coalescing: the goal of the per-pool design
// ---------------------------------------------------------------------------------------------

#[test]
fn fifty_configurations_converge_with_one_lb_put_one_vmss_put_and_one_update_per_instance() {
    for instances in [2, 16] {
        let mut state = vmss_state(instances);
        let configs: Vec<Config> = (0..50)
            .map(|i| cfg(&format!("sgc{i:02}"), Egress::Managed))
            .collect();
        let p = converge(&vmss_pool(), &configs, &mut state);
        assert!(matches!(p.lb, LbWrite::Put { .. }));
        assert!(p.vmss_model.is_some());
        assert_eq!(p.nic_updates.len(), instances);
        assert_eq!(
            p.prefixes_to_create.len(),
            50,
            "one prefix per configuration is inherent"
        );
        assert_eq!(p.write_count(), 50 + 1 + 1 + instances);
        let ports: BTreeSet<u16> = p.ports.values().copied().collect();
        assert_eq!(ports, (6000..6050).collect());
        let lb = state.lb.as_ref().expect("lb");
        assert_eq!((lb.rules.len(), lb.probes.len(), lb.frontends.len()), (50, 50, 1));

        // ... and deleting them all together is as cheap.
        let gone: Vec<Config> = configs
            .iter()
            .map(|c| Config {
                deleting: true,
                ..c.clone()
            })
            .collect();
        let p = converge(&vmss_pool(), &gone, &mut state);
        assert_eq!(p.lb, LbWrite::Delete);
        assert_eq!(p.write_count(), 1 + 1 + instances + 50);
        assert!(state.managed_prefixes.is_empty());
    }
}

#[test]
fn a_node_joining_gets_every_configuration_in_one_update() {
    let mut state = vmss_state(2);
    let configs: Vec<Config> = (0..5).map(|i| cfg(&format!("s{i}"), Egress::Private)).collect();
    converge(&vmss_pool(), &configs, &mut state);
    let mut newcomer = vmss_state(3).instances.remove(2);
    newcomer.instance_id = "7".into();
    state.instances.push(newcomer);
    let p = converge(&vmss_pool(), &configs, &mut state);
    assert_eq!(p.write_count(), 1);
    assert_eq!(p.nic_updates[0].target, "7");
    assert_eq!(p.nic_updates[0].nic.ip_configs.len(), 6);
}

// ---------------------------------------------------------------------------------------------
// VM-based pools (upstream agentpoolvms)
// ---------------------------------------------------------------------------------------------

#[test]
fn vm_pool_private_mode_updates_each_nic_and_reports_secondary_ips() {
    let mut state = vm_state(2);
    let p = converge(&vm_pool(), &[cfg("a", Egress::Private)], &mut state);
    assert_eq!(p.nic_updates.len(), 2);
    assert!(p.vmss_model.is_none());
    let nic = &p.nic_updates[0].nic;
    assert_eq!(nic.ip_configs[0].backend_pools, vec![env().backend_pool_id(POOL)]);
    assert_eq!(nic.ip_configs[1].name, "egressgateway-a");
    assert_eq!(nic.ip_configs[1].subnet_id.as_deref(), Some(NODE_SUBNET));
    let facts = config_facts(&vm_pool(), &cfg("a", Egress::Private), &state, &p.ports, None);
    assert_eq!(facts.vm_profiles[0].node_name, "aks-gwpool-0-nic");
    assert_eq!(
        facts.egress_ip_prefix.as_deref().map(|s| s.split(',').count()),
        Some(2)
    );
}

#[test]
fn vm_pool_public_mode_creates_a_public_ip_per_nic_named_by_upstreams_hash() {
    let mut state = vm_state(1);
    state.vm_nics[0].name = "aks-nodepool1-12345678-vmss000000".into();
    let p = converge(&vm_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let name = vm_pool_public_ip_name("egressgateway-a", "aks-nodepool1-12345678-vmss000000");
    assert_eq!(
        p.public_ips_to_create,
        vec![PublicIpCreate {
            name: name.clone(),
            prefix_id: env().prefix_id("egressgateway-a"),
        }]
    );
    assert_eq!(
        p.nic_updates[0].nic.ip_configs[1].public_ip_address_id,
        Some(env().public_ip_id(&name))
    );
    // Deleting: the NIC loses the ipConfig and the backend pool (upstream never removed it), the public IP
    // goes before its prefix (InUsePublicIpPrefixCannotBeDeleted, upstream #1223).
    let p = converge(&vm_pool(), &[deleting("a", Egress::Managed)], &mut state);
    assert_eq!(p.nic_updates[0].nic, primary_nic());
    assert_eq!(p.public_ips_to_delete, vec![name.to_ascii_lowercase()]);
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    assert!(state.public_ips.is_empty());
}

#[test]
fn a_vm_pool_deletes_only_the_public_ips_it_made_for_its_nics_from_its_configurations_prefixes() {
    let byo = || Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(BYO).expect("a prefix ID"),
    };
    let mut state = vm_state(2);
    converge(
        &vm_pool(),
        &[cfg("a", byo()), cfg("b", Egress::Managed)],
        &mut state,
    );
    let own: Vec<String> = state
        .vm_nics
        .iter()
        .map(|n| vm_pool_public_ip_name("mine", &n.name).to_ascii_lowercase())
        .collect();
    for name in &own {
        assert_eq!(
            state.public_ips.get(name).map(|ip| ip.prefix_id.as_str()),
            Some(BYO),
            "{name}"
        );
    }
    // The node resource group holds other public IPs that reference a prefix, named like the operator's.
    let user_prefix = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/users";
    let others = [
        // The user's, of the BYO prefix and named after it.
        ("mine-appgw".to_string(), BYO.to_string()),
        // Another VM pool's, of the same BYO prefix.
        (
            vm_pool_public_ip_name("mine", "aks-otherpool-0-nic"),
            BYO.to_string(),
        ),
        // Named after a managed prefix, of another prefix.
        ("egressgateway-b-appgw".to_string(), user_prefix.to_string()),
    ];
    for (name, prefix) in &others {
        state
            .public_ips
            .insert(name.to_ascii_lowercase(), PublicIp::of_prefix(prefix));
    }
    let p = converge(
        &vm_pool(),
        &[cfg("a", byo()), cfg("b", Egress::Managed)],
        &mut state,
    );
    assert!(p.public_ips_to_delete.is_empty(), "{p:#?}");

    // `a` switches to private. Its public IPs are the operator's by their own name and prefix (not by what `a`
    // uses now): both go, the second NIC's although it is allocated from a prefix of the same name in another
    // resource group (a BYO prefix `a` used before). The others stay.
    let same_name =
        "/subscriptions/s/resourceGroups/elsewhere/providers/Microsoft.Network/publicIPPrefixes/mine";
    // Created before the operator tagged its public IPs: known by its name alone.
    state
        .public_ips
        .insert(own[1].clone(), PublicIp::of_prefix(same_name));
    let p = converge(
        &vm_pool(),
        &[cfg("a", Egress::Private), cfg("b", Egress::Managed)],
        &mut state,
    );
    let mut deleted = p.public_ips_to_delete.clone();
    deleted.sort();
    let mut expected = own.clone();
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(p.prefixes_to_delete.is_empty());
    for (name, prefix) in &others {
        assert_eq!(
            state
                .public_ips
                .get(&name.to_ascii_lowercase())
                .map(|ip| &ip.prefix_id),
            Some(prefix),
            "{name} was deleted"
        );
    }
    assert!(own.iter().all(|n| !state.public_ips.contains_key(n)));
}

#[test]
fn vm_pool_nic_without_a_primary_ip_config_is_a_pool_problem() {
    let mut state = vm_state(1);
    state.vm_nics[0].nic.ip_configs.push(IpConfig::default());
    state.vm_nics[0].nic.ip_configs[0].primary = false;
    assert_eq!(
        plan_pool(&vm_pool(), &[cfg("a", Egress::Private)], &state, &env()),
        Err(PoolProblem::NoPrimaryIpConfig("nic".into()))
    );
}

// ---------------------------------------------------------------------------------------------
// Adopted prefixes (upstream's, after a migration)
// ---------------------------------------------------------------------------------------------

const UPSTREAM: &str = "egressgateway-6f1c3a52-9a0e-4d5b-8c1e-2b7d9e4f0a11";

fn adopted(uid: &str, name: &str) -> Config {
    Config {
        adopted: Some(name.into()),
        ..cfg(uid, Egress::Adopted { name: name.into() })
    }
}

/// The state with upstream's prefix in it (as it is after a migration), CIDR 20.9.9.0/31.
fn with_upstream_prefix(mut state: AzureState) -> AzureState {
    state.managed_prefixes.insert(
        UPSTREAM.into(),
        PrefixState {
            prefix_len: Some(31),
            cidr: Some("20.9.9.0/31".into()),
            public_ip_ids: vec![],
            failed: false,
        },
    );
    state
}

#[test]
fn an_adopted_prefix_is_referenced_like_a_byo_one_and_never_created() {
    let mut state = with_upstream_prefix(vmss_state(2));
    let p = converge(&vmss_pool(), &[adopted("a", UPSTREAM)], &mut state);
    assert!(p.prefixes_to_create.is_empty(), "{p:?}");
    assert!(p.prefixes_to_delete.is_empty());
    assert!(p.problems.is_empty());
    let model = p.vmss_model.expect("model");
    assert_eq!(
        model.ip_configs[1].public_ip_config,
        Some(("egressgateway-a".into(), env().prefix_id(UPSTREAM)))
    );
    let facts = config_facts(
        &vmss_pool(),
        &adopted("a", UPSTREAM),
        &state,
        &p.ports,
        Some("20.9.9.0/31"),
    );
    assert_eq!(facts.egress_ip_prefix.as_deref(), Some("20.9.9.0/31"));
    // Updating (another configuration joins): the adopted prefix stays as it is.
    let p = converge(
        &vmss_pool(),
        &[adopted("a", UPSTREAM), cfg("b", Egress::Managed)],
        &mut state,
    );
    assert_eq!(p.prefixes_to_create.len(), 1);
    assert_eq!(p.prefixes_to_create[0].name, "egressgateway-b");
    assert!(p.prefixes_to_delete.is_empty());
    assert!(state.managed_prefixes.contains_key(UPSTREAM));
}

#[test]
fn deleting_an_adopted_configuration_deletes_its_prefix_after_the_nics_release_it() {
    let mut state = with_upstream_prefix(vmss_state(2));
    converge(&vmss_pool(), &[adopted("a", UPSTREAM)], &mut state);
    let gone = Config {
        deleting: true,
        ..adopted("a", UPSTREAM)
    };
    let p = converge(&vmss_pool(), &[gone], &mut state);
    assert_eq!(p.prefixes_to_delete, vec![UPSTREAM.to_string()]);
    assert!(p.prefixes_to_create.is_empty());
    assert_eq!(p.lb, LbWrite::Delete);
    assert_eq!(
        p.vmss_model.expect("model"),
        primary_nic(),
        "ipConfig released first"
    );
    assert!(!state.managed_prefixes.contains_key(UPSTREAM));
}

#[test]
fn deleting_an_adopted_configuration_on_a_vm_pool_deletes_the_public_ips_before_the_prefix() {
    let mut state = with_upstream_prefix(vm_state(1));
    let p = converge(&vm_pool(), &[adopted("a", UPSTREAM)], &mut state);
    let pip = vm_pool_public_ip_name(UPSTREAM, "aks-gwpool-0-nic");
    assert_eq!(
        p.public_ips_to_create,
        vec![PublicIpCreate {
            name: pip.clone(),
            prefix_id: env().prefix_id(UPSTREAM),
        }]
    );
    assert!(p.prefixes_to_create.is_empty());
    let gone = Config {
        deleting: true,
        ..adopted("a", UPSTREAM)
    };
    let p = converge(&vm_pool(), &[gone], &mut state);
    assert_eq!(p.nic_updates[0].nic, primary_nic());
    assert_eq!(p.public_ips_to_delete, vec![pip.to_ascii_lowercase()]);
    assert_eq!(p.prefixes_to_delete, vec![UPSTREAM.to_string()]);
    assert!(state.public_ips.is_empty());
    assert!(state.managed_prefixes.is_empty());
}

#[test]
fn switching_an_adopted_configuration_to_byo_or_private_deletes_the_adopted_prefix() {
    let byo = Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(BYO).expect("a prefix ID"),
    };
    for other in [Egress::Private, byo] {
        let mut state = with_upstream_prefix(vmss_state(1));
        converge(&vmss_pool(), &[adopted("a", UPSTREAM)], &mut state);
        let switched = Config {
            egress: other.clone(),
            ..adopted("a", UPSTREAM)
        };
        let p = converge(&vmss_pool(), &[switched], &mut state);
        assert_eq!(p.prefixes_to_delete, vec![UPSTREAM.to_string()], "{other:?}");
        assert!(p.prefixes_to_create.is_empty(), "{other:?}");
    }
}

#[test]
fn an_adopted_prefix_that_is_gone_or_of_another_length_blocks_only_its_configuration() {
    let mut state = vmss_state(1);
    let p = plan(
        &vmss_pool(),
        &[adopted("a", UPSTREAM), cfg("b", Egress::Managed)],
        &state,
    );
    assert_eq!(
        p.problems.get("a"),
        Some(&ConfigProblem::AdoptedPrefixMissing {
            name: UPSTREAM.into()
        })
    );
    let message = p.problems["a"].to_string();
    assert!(
        message.contains(api::names::ADOPTED_PREFIX_ANNOTATION) && message.contains(UPSTREAM),
        "{message}"
    );
    assert!(p.prefixes_to_create.iter().all(|c| c.name == "egressgateway-b"));
    assert!(!p.ports.contains_key("a"));
    state = with_upstream_prefix(state);
    if let Some(pr) = state.managed_prefixes.get_mut(UPSTREAM) {
        pr.prefix_len = Some(30);
    }
    let p = plan(&vmss_pool(), &[adopted("a", UPSTREAM)], &state);
    assert_eq!(
        p.problems.get("a"),
        Some(&ConfigProblem::PrefixSizeMismatch {
            found: 30,
            required: 31
        })
    );
    assert!(p.prefixes_to_delete.is_empty(), "never deleted while adopted");
}

// --- which prefix to adopt ---

const CIDR: &str = "20.9.9.0/31";

fn listed(name: &str, cidr: &str, len: i32) -> ListedPrefix {
    ListedPrefix {
        name: name.into(),
        cidr: Some(cidr.into()),
        prefix_len: Some(len),
    }
}

fn candidate(c: Config, cidr: Option<&str>) -> AdoptionCandidate {
    AdoptionCandidate {
        config: c,
        status_cidr: cidr.map(str::to_string),
    }
}

fn uids(u: &[&str]) -> BTreeSet<String> {
    u.iter().map(|s| s.to_string()).collect()
}

fn adoptions(
    candidates: &[AdoptionCandidate],
    prefixes: &[ListedPrefix],
    known: &[&str],
    taken: &[&str],
) -> BTreeMap<String, Result<String, NoAdoption>> {
    plan_adoptions(&vmss_pool(), candidates, prefixes, &uids(known), &uids(taken))
}

#[test]
fn the_one_matching_upstream_prefix_is_adopted() {
    let got = adoptions(
        &[candidate(cfg("a", Egress::Managed), Some(CIDR))],
        &[
            listed(UPSTREAM, CIDR, 31),
            listed(
                "egressgateway-0b7e5a0e-3f52-4f3c-9d6e-7b1a2c3d4e5f",
                "20.9.9.2/31",
                31,
            ),
            listed("unrelated", "20.9.9.4/31", 31),
        ],
        &["a"],
        &[],
    );
    assert_eq!(got, BTreeMap::from([("a".to_string(), Ok(UPSTREAM.to_string()))]));
}

#[test]
fn nothing_is_adopted_without_a_match() {
    let no_match = |prefixes: &[ListedPrefix], known: &[&str], taken: &[&str]| {
        let got = adoptions(
            &[candidate(cfg("a", Egress::Managed), Some(CIDR))],
            prefixes,
            known,
            taken,
        );
        assert_eq!(
            got.get("a"),
            Some(&Err(NoAdoption::NoMatch {
                cidr: CIDR.into(),
                prefix_len: 31
            })),
            "{prefixes:?}"
        );
    };
    // No prefix at all.
    no_match(&[], &["a"], &[]);
    // Another CIDR.
    no_match(&[listed(UPSTREAM, "20.9.9.2/31", 31)], &["a"], &[]);
    // The same CIDR with another length.
    no_match(&[listed(UPSTREAM, "20.9.9.0/30", 30)], &["a"], &[]);
    no_match(&[listed(UPSTREAM, CIDR, 30)], &["a"], &[]);
    // Named after a configuration that exists: its managed prefix, never adopted.
    let uid = UPSTREAM.trim_start_matches("egressgateway-");
    no_match(&[listed(UPSTREAM, CIDR, 31)], &["a", uid], &[]);
    // Not named egressgateway-<UUID>.
    no_match(&[listed("egressgateway-notauuid", CIDR, 31)], &["a"], &[]);
    no_match(&[listed("my-prefix", CIDR, 31)], &["a"], &[]);
    // Adopted already by another configuration.
    no_match(
        &[listed(UPSTREAM, CIDR, 31)],
        &["a"],
        &[&UPSTREAM.to_ascii_lowercase()],
    );
    // A prefix without properties.
    no_match(
        &[ListedPrefix {
            name: UPSTREAM.into(),
            ..ListedPrefix::default()
        }],
        &["a"],
        &[],
    );
}

#[test]
fn two_matching_prefixes_or_two_configurations_with_the_cidr_adopt_nothing() {
    let second = "egressgateway-0b7e5a0e-3f52-4f3c-9d6e-7b1a2c3d4e5f";
    let got = adoptions(
        &[candidate(cfg("a", Egress::Managed), Some(CIDR))],
        &[listed(UPSTREAM, CIDR, 31), listed(second, CIDR, 31)],
        &["a"],
        &[],
    );
    assert!(
        matches!(got.get("a"), Some(Err(NoAdoption::Ambiguous { names, .. })) if names.len() == 2),
        "{got:?}"
    );
    let got = adoptions(
        &[
            candidate(cfg("a", Egress::Managed), Some(CIDR)),
            candidate(cfg("b", Egress::Managed), Some(CIDR)),
        ],
        &[listed(UPSTREAM, CIDR, 31)],
        &["a", "b"],
        &[],
    );
    assert_eq!(
        got.get("a"),
        Some(&Err(NoAdoption::SharedCidr {
            cidr: CIDR.into(),
            others: vec!["b".into()]
        }))
    );
    assert_eq!(
        got.get("b"),
        Some(&Err(NoAdoption::SharedCidr {
            cidr: CIDR.into(),
            others: vec!["a".into()]
        }))
    );
}

#[test]
fn only_managed_public_configurations_without_their_own_prefix_and_with_a_status_cidr_adopt() {
    let prefixes = [
        listed(UPSTREAM, CIDR, 31),
        listed("egressgateway-own", "20.9.9.8/31", 31),
    ];
    let byo = Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(BYO).expect("a prefix ID"),
    };
    for c in [
        candidate(cfg("a", Egress::Private), Some(CIDR)),
        candidate(cfg("a", byo), Some(CIDR)),
        candidate(
            adopted("a", "egressgateway-7d3f0f6e-1c1b-4b59-a8a1-0e3c6f9d2b44"),
            Some(CIDR),
        ),
        candidate(deleting("a", Egress::Managed), Some(CIDR)),
        candidate(cfg("a", Egress::Managed), None),
        // Private mode's status: addresses, not a CIDR.
        candidate(cfg("a", Egress::Managed), Some("10.0.1.4,10.0.1.5")),
        candidate(cfg("a", Egress::Managed), Some("")),
        // Its own prefix exists.
        candidate(cfg("own", Egress::Managed), Some(CIDR)),
    ] {
        let got = adoptions(std::slice::from_ref(&c), &prefixes, &["a", "own"], &[]);
        assert!(got.is_empty(), "{c:?}: {got:?}");
    }
}

#[test]
fn an_adoption_annotation_must_name_an_upstream_prefix_of_the_node_resource_group() {
    const SUB: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let id = |rg: &str, name: &str| {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/publicIPPrefixes/{name}"
        )
    };
    let known = uids(&["a"]);
    assert_eq!(
        check_adopted_annotation(&id("MC_rg", UPSTREAM), SUB, "mc_rg", &known),
        Ok(UPSTREAM.to_string())
    );
    let refused = |value: &str, known: &BTreeSet<String>, says: &str| {
        let e = check_adopted_annotation(value, SUB, "mc_rg", known).expect_err(value);
        assert!(
            e.contains(api::names::ADOPTED_PREFIX_ANNOTATION) && e.contains("egressgateway-<UUID>"),
            "{e}"
        );
        assert!(e.contains(says), "{e}");
    };
    refused(&id("mc_rg", "my-prefix"), &known, "my-prefix");
    refused(&id("mc_rg", "egressgateway-x"), &known, "egressgateway-x");
    refused(&id("other", UPSTREAM), &known, "resource group other");
    refused(
        &id("mc_rg", UPSTREAM).replace(SUB, "00000000-0000-0000-0000-000000000001"),
        &known,
        "subscription",
    );
    refused("not an id", &known, "ARM resource ID");
    let uid = UPSTREAM.trim_start_matches("egressgateway-");
    refused(&id("mc_rg", UPSTREAM), &uids(&["a", uid]), UPSTREAM);
}

#[test]
fn of_two_configurations_adopting_one_prefix_the_older_keeps_it() {
    const SUB: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/mc_rg/providers/Microsoft.Network/publicIPPrefixes/{UPSTREAM}"
    );
    let claim = |uid: &str, value: &str| AdoptionClaim {
        uid: uid.into(),
        who: format!("app/{uid}"),
        value: value.into(),
    };
    let (checked, taken) = check_adoption_claims(
        &[
            claim("old", &id),
            claim(
                "young",
                &id.to_ascii_uppercase().replace(&SUB.to_ascii_uppercase(), SUB),
            ),
            claim(
                "odd",
                "/subscriptions/x/resourceGroups/mc_rg/providers/Microsoft.Network/publicIPPrefixes/mine",
            ),
        ],
        SUB,
        "mc_rg",
        &uids(&["old", "young", "odd"]),
    );
    assert_eq!(checked["old"], Ok(UPSTREAM.to_string()));
    let refused = checked["young"].clone().expect_err("adopted already");
    assert!(
        refused.contains("app/old") && refused.contains(api::names::ADOPTED_PREFIX_ANNOTATION),
        "{refused}"
    );
    assert!(checked["odd"].is_err());
    assert_eq!(taken, uids(&[&UPSTREAM.to_ascii_lowercase()]));
}

// ---------------------------------------------------------------------------------------------
// Kept configurations (blocked for a pass, or provisioned by another reference to the same scale set)
// ---------------------------------------------------------------------------------------------

fn kept_cfg(uid: &str, egress: Egress) -> Config {
    Config {
        kept: true,
        ..cfg(uid, egress)
    }
}

fn byo() -> Egress {
    Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(BYO).expect("a prefix ID"),
    }
}

#[test]
fn a_kept_configuration_loses_nothing_and_changes_nothing() {
    let mut state = vmss_state(2);
    converge(
        &vmss_pool(),
        &[cfg("a", Egress::Managed), cfg("b", byo())],
        &mut state,
    );
    let before = state.clone();
    // b's BYO prefix cannot be read this pass: b is kept as it is; so is c, new, whose adoption was not
    // recorded: nothing is made for it (no prefix, rule, probe or ipConfiguration).
    let p = plan(
        &vmss_pool(),
        &[
            cfg("a", Egress::Managed),
            kept_cfg("b", byo()),
            kept_cfg("c", Egress::Managed),
        ],
        &state,
    );
    assert!(p.is_noop(), "{p:#?}");
    assert_eq!(p.ports.get("a"), Some(&6000));
    assert!(!p.ports.contains_key("b") && !p.ports.contains_key("c"));
    // Alone on a pool with nothing yet, a kept configuration makes neither a frontend nor a load balancer.
    let p = plan(&vmss_pool(), &[kept_cfg("c", Egress::Managed)], &vmss_state(2));
    assert!(p.is_noop(), "{p:#?}");
    // Even as the only configuration left: rule, probe, frontend, backend, ipConfigurations, backend pool
    // on the NICs, and its prefix all stay.
    let p = plan(
        &vmss_pool(),
        &[deleting("a", Egress::Managed), kept_cfg("b", byo())],
        &state,
    );
    apply(&mut state, &p);
    let lb = state.lb.as_ref().expect("load balancer");
    assert_eq!(
        *rule(lb, "b"),
        *rule(before.lb.as_ref().expect("lb"), "b"),
        "b's rule, port included"
    );
    assert_eq!(lb.rules.len(), 1, "a's rule is gone");
    assert!(lb.probes.iter().any(|p| p.name == "b") && lb.probes.len() == 1);
    assert_eq!((lb.frontends.len(), lb.backends.len()), (1, 1));
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    let b_ip_config = |nic: &Nic| {
        nic.ip_configs
            .iter()
            .find(|c| c.name == "egressgateway-b")
            .cloned()
    };
    let model = state.vmss_model.as_ref().expect("model");
    assert_eq!(
        b_ip_config(model),
        b_ip_config(before.vmss_model.as_ref().expect("model"))
    );
    assert!(b_ip_config(model).is_some());
    assert!(!model.ip_configs.iter().any(|c| c.name == "egressgateway-a"));
    assert_eq!(
        model.ip_configs[0].backend_pools,
        vec![env().backend_pool_id(POOL)],
        "the backend pool stays on the primary ipConfiguration"
    );
    for i in &state.instances {
        let nic = i.nic.as_ref().expect("nic");
        assert!(b_ip_config(nic).is_some(), "{}", i.instance_id);
        assert_eq!(nic.ip_configs[0].backend_pools, vec![env().backend_pool_id(POOL)]);
    }
    // Nothing more to do while it stays kept.
    let again = plan(&vmss_pool(), &[kept_cfg("b", byo())], &state);
    assert!(again.is_noop(), "{again:#?}");
}

#[test]
fn a_kept_rule_stays_as_it_is_and_new_rules_avoid_its_port() {
    let mut state = vmss_state(1);
    // b's rule has a port the plan would replace for a wanted configuration (out of range).
    let mut lb = existing_lb_with_rule("a", 6000);
    let odd = existing_lb_with_rule("b", 6001);
    lb.rules.extend(odd.rules);
    lb.probes.extend(odd.probes);
    lb.rules[1].frontend_port = Some(7001);
    lb.rules[1].backend_port = Some(7001);
    let c = existing_lb_with_rule("c", 6002);
    lb.rules.extend(c.rules);
    lb.probes.extend(c.probes);
    state.lb = Some(lb.clone());
    let p = plan(
        &vmss_pool(),
        &[
            kept_cfg("a", Egress::Private),
            kept_cfg("b", Egress::Private),
            cfg("c", Egress::Private),
            cfg("d", Egress::Private),
        ],
        &state,
    );
    let planned = lb_of(&p);
    assert_eq!(*rule(planned, "a"), lb.rules[0]);
    assert_eq!(*rule(planned, "b"), lb.rules[1], "kept, port and all");
    assert_eq!(p.ports.get("c"), Some(&6002));
    assert_eq!(p.ports.get("d"), Some(&6001), "the lowest port no kept rule has");
    assert!(!p.ports.contains_key("a") && !p.ports.contains_key("b"));
}

#[test]
fn a_kept_configuration_on_a_vm_pool_keeps_its_public_ips_and_prefix() {
    let mut state = vm_state(1);
    converge(
        &vm_pool(),
        &[cfg("a", Egress::Managed), cfg("b", Egress::Managed)],
        &mut state,
    );
    let before = state.clone();
    let p = plan(
        &vm_pool(),
        &[deleting("a", Egress::Managed), kept_cfg("b", Egress::Managed)],
        &state,
    );
    let pip_b = vm_pool_public_ip_name("egressgateway-b", "aks-gwpool-0-nic").to_ascii_lowercase();
    assert!(
        !p.public_ips_to_delete.contains(&pip_b),
        "{:?}",
        p.public_ips_to_delete
    );
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    apply(&mut state, &p);
    let ip_config_b = |s: &AzureState| {
        s.vm_nics[0]
            .nic
            .ip_configs
            .iter()
            .find(|c| c.name == "egressgateway-b")
            .cloned()
    };
    assert!(ip_config_b(&state).is_some());
    assert_eq!(ip_config_b(&state), ip_config_b(&before));
    assert!(state.public_ips.contains_key(&pip_b));
}

#[test]
fn two_references_to_one_scale_set_each_keep_the_others_configurations() {
    // a is provisioned by the pass of `nodepool/gateway`, b by that of the scale set's own reference: each
    // plan keeps the other's configuration.
    let of_a = [cfg("a", Egress::Managed), kept_cfg("b", Egress::Managed)];
    let of_b = [kept_cfg("a", Egress::Managed), cfg("b", Egress::Managed)];
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &of_a, &mut state);
    converge(&vmss_pool(), &of_b, &mut state);
    let lb = state.lb.clone().expect("load balancer");
    assert_eq!(
        (rule(&lb, "a").frontend_port, rule(&lb, "b").frontend_port),
        (Some(6000), Some(6001))
    );
    for plan_of in [&of_a[..], &of_b[..]] {
        let p = plan(&vmss_pool(), plan_of, &state);
        assert!(p.is_noop(), "{p:#?}");
    }
    let names = |nic: &Option<Nic>| {
        nic.as_ref()
            .map(|n| n.ip_configs.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        names(&state.vmss_model),
        ["ipconfig1", "egressgateway-a", "egressgateway-b"]
    );
    // a is deleted: its pass removes only a's part; b's, and the frontend and backend pool it uses, stay.
    let p = converge(
        &vmss_pool(),
        &[deleting("a", Egress::Managed), kept_cfg("b", Egress::Managed)],
        &mut state,
    );
    assert_eq!(p.prefixes_to_delete, vec!["egressgateway-a".to_string()]);
    let lb = state.lb.clone().expect("load balancer");
    assert_eq!(rule(&lb, "b").frontend_port, Some(6001));
    assert_eq!((lb.frontends.len(), lb.backends.len()), (1, 1));
    assert_eq!(names(&state.vmss_model), ["ipconfig1", "egressgateway-b"]);
    assert!(plan(&vmss_pool(), &of_b[1..], &state).is_noop());
}

#[test]
fn a_kept_configuration_with_nothing_in_azure_keeps_no_frontend_backend_or_load_balancer() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    // b (another reference's configuration, never admitted) has no rule and no ipConfiguration: deleting a,
    // the last configuration with anything in Azure, deletes the load balancer as if b were not there.
    let p = converge(
        &vmss_pool(),
        &[deleting("a", Egress::Managed), kept_cfg("b", Egress::Managed)],
        &mut state,
    );
    assert_eq!(p.lb, LbWrite::Delete, "{p:#?}");
    assert_eq!(state.vmss_model.as_ref(), Some(&primary_nic()));
}

#[test]
fn a_kept_ip_configuration_alone_keeps_the_backend_pool_and_the_load_balancer() {
    let mut state = vmss_state(2);
    converge(
        &vmss_pool(),
        &[cfg("a", Egress::Managed), cfg("b", Egress::Managed)],
        &mut state,
    );
    // b's rule is gone (removed by hand, say) but its ipConfigurations are still on the NICs, whose primary
    // ipConfigurations stay in the backend pool: the pool stays, and with it the load balancer and frontend
    // (ARM refuses to delete a load balancer whose backend pool NICs reference).
    if let Some(lb) = state.lb.as_mut() {
        lb.rules.retain(|r| r.name != "b");
        lb.probes.retain(|p| p.name != "b");
    }
    let p = plan(
        &vmss_pool(),
        &[deleting("a", Egress::Managed), kept_cfg("b", Egress::Managed)],
        &state,
    );
    let lb = lb_of(&p);
    assert!(lb.rules.is_empty() && lb.probes.is_empty(), "{lb:#?}");
    assert_eq!(lb.backends, vec![POOL.to_string()]);
    assert_eq!(lb.frontends.len(), 1);
}

#[test]
fn a_deletion_waits_only_for_refused_targets_that_still_carry_its_ip_configuration() {
    let mut state = vmss_state(2);
    converge(&vmss_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let with_a = state.instances[0].instance_id.clone();
    // A new instance that never got a's ipConfiguration.
    if let Some(nic) = state.instances[1].nic.as_mut() {
        nic.ip_configs.retain(|c| c.name != "egressgateway-a");
    }
    let without_a = state.instances[1].instance_id.clone();
    assert!(left_on_refused(&state, [&with_a], "a"));
    assert!(left_on_refused(&state, [&with_a.to_uppercase()], "A"));
    assert!(!left_on_refused(&state, [&without_a], "a"));
    assert!(!left_on_refused(&state, [&"gone".to_string()], "a"));
    assert!(!left_on_refused(&state, [&with_a], "b"));
    let mut vm = vm_state(1);
    converge(&vm_pool(), &[cfg("a", Egress::Private)], &mut vm);
    let nic = vm.vm_nics[0].name.clone();
    assert!(left_on_refused(&vm, [&nic], "a"));
}

// ---------------------------------------------------------------------------------------------
// Problems the plan finds keep their configuration
// ---------------------------------------------------------------------------------------------

/// The names of the ipConfigurations of the model and of every instance, model first.
fn ip_config_names(state: &AzureState) -> Vec<Vec<String>> {
    state
        .vmss_model
        .iter()
        .chain(state.instances.iter().filter_map(|i| i.nic.as_ref()))
        .map(|nic| nic.ip_configs.iter().map(|c| c.name.clone()).collect())
        .collect()
}

#[test]
fn a_provisioned_configuration_whose_prefix_now_has_another_length_keeps_its_rule_port_and_ip_configurations()
{
    let mut state = vmss_state(2);
    converge(
        &vmss_pool(),
        &[cfg("a", Egress::Managed), cfg("b", Egress::Private)],
        &mut state,
    );
    let before = state.clone();
    // The pool's prefix size changed (a node pool's tag, say): a's /31 prefix no longer fits.
    let resized = Pool {
        prefix_len: 30,
        ..vmss_pool()
    };
    let configs = [
        cfg("a", Egress::Managed),
        cfg("b", Egress::Private),
        cfg("c", Egress::Managed),
    ];
    let p = converge(&resized, &configs, &mut state);
    assert_eq!(
        p.problems.get("a"),
        Some(&ConfigProblem::PrefixSizeMismatch {
            found: 31,
            required: 30
        })
    );
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    // Its public IPs keep the prefix in use, so ARM refuses to delete it: the message names what works.
    let message = p.problems["a"].to_string();
    assert!(
        message.contains("restore the pool's prefix size")
            && message.contains("delete and recreate the configuration (new egress IPs)")
            && !message.contains("delete the prefix"),
        "{message}"
    );
    assert!(p.prefixes_to_delete.is_empty(), "{p:#?}");
    assert_eq!(
        p.prefixes_to_create,
        vec![PrefixCreate {
            name: "egressgateway-c".into(),
            prefix_len: 30
        }]
    );
    let lb = state.lb.as_ref().expect("load balancer");
    let lb_before = before.lb.as_ref().expect("load balancer");
    assert_eq!(rule(lb, "a"), rule(lb_before, "a"), "a's rule and port stay");
    assert!(lb.probes.iter().any(|pr| pr.name == "a"));
    assert_eq!(p.ports.get("b"), Some(&6001));
    assert_eq!(p.ports.get("c"), Some(&6002), "a's port stays taken");
    assert!(!p.ports.contains_key("a"));
    for (now, was) in ip_config_names(&state).iter().zip(ip_config_names(&before)) {
        assert_eq!(now, &[was.clone(), vec!["egressgateway-c".to_string()]].concat());
    }
    let a_ip_config = |s: &AzureState| {
        s.vmss_model
            .as_ref()
            .and_then(|m| m.ip_configs.iter().find(|c| c.name == "egressgateway-a").cloned())
    };
    assert_eq!(a_ip_config(&state), a_ip_config(&before), "on its old prefix");

    // On a VM pool its public IPs stay too: a plan with nothing to add writes nothing.
    let mut state = vm_state(2);
    converge(&vm_pool(), &[cfg("a", Egress::Managed)], &mut state);
    let p = plan(
        &Pool {
            prefix_len: 30,
            ..vm_pool()
        },
        &[cfg("a", Egress::Managed)],
        &state,
    );
    assert!(p.problems.contains_key("a"));
    assert!(p.is_noop(), "{p:#?}");
}

/// `n` private configurations `c0000`… provisioned on a one-instance scale set, every port taken when `n` is
/// 1000. The first is planned and applied; the others' rules, probes, ipConfigurations and addresses are built
/// as copies of its own (planning and applying 1000 configurations would make this suite slow).
fn provisioned_private(n: usize) -> (Vec<Config>, AzureState) {
    let configs: Vec<Config> = (0..n)
        .map(|i| cfg(&format!("c{i:04}"), Egress::Private))
        .collect();
    let mut state = vmss_state(1);
    converge(&vmss_pool(), &configs[..1], &mut state);
    let first = managed_resource_name(&configs[0].uid);
    let lb = state.lb.as_mut().expect("load balancer");
    let rule0 = rule(lb, &configs[0].uid).clone();
    for (i, c) in configs.iter().enumerate().skip(1) {
        let port = i32::from(WIREGUARD_PORT_START) + i32::try_from(i).expect("small");
        lb.rules.push(LbRule {
            name: c.uid.clone(),
            probe: Some(c.uid.clone()),
            frontend_port: Some(port),
            backend_port: Some(port),
            ..rule0.clone()
        });
        lb.probes.push(expected_probe(&c.uid, &env()));
    }
    let nics = state
        .vmss_model
        .iter_mut()
        .chain(state.instances.iter_mut().filter_map(|i| i.nic.as_mut()));
    for nic in nics {
        let ip_config0 = nic
            .ip_configs
            .iter()
            .find(|c| c.name == first)
            .cloned()
            .expect("the first configuration's ipConfiguration");
        for c in &configs[1..] {
            nic.ip_configs.push(IpConfig {
                name: managed_resource_name(&c.uid),
                ..ip_config0.clone()
            });
        }
    }
    for (i, c) in configs.iter().enumerate().skip(1) {
        state.instances[0].addresses.by_ip_config.insert(
            managed_resource_name(&c.uid).to_ascii_lowercase(),
            format!("10.0.{}.{}", 2 + i / 250, i % 250),
        );
    }
    assert!(plan(&vmss_pool(), &configs, &state).is_noop());
    (configs, state)
}

#[test]
fn a_new_configuration_without_a_free_port_adds_nothing_and_takes_nothing() {
    let (mut configs, state) = provisioned_private(1000);
    configs.push(cfg("new", Egress::Managed));
    let p = plan(&vmss_pool(), &configs, &state);
    assert_eq!(
        p.problems.get("new"),
        Some(&ConfigProblem::NoAvailablePorts(1000))
    );
    assert!(
        p.is_noop(),
        "no prefix, rule, probe or ipConfiguration for it: {p:#?}"
    );
    assert_eq!(p.ports.len(), 1000);
}

#[test]
fn a_configuration_that_lost_its_rule_gets_the_port_its_status_advertises_back() {
    let (mut configs, mut state) = provisioned_private(1000);
    // c0500's rule is removed by hand; a configuration planned before it would take the lowest free port,
    // 6500, which c0500's status still advertises (its pods use wg-6500).
    if let Some(lb) = state.lb.as_mut() {
        lb.rules.retain(|r| r.name != "c0500");
    }
    configs[500].status_port = Some(6500);
    configs.insert(0, cfg("new", Egress::Private));
    let p = plan(&vmss_pool(), &configs, &state);
    assert_eq!(p.ports.get("c0500"), Some(&6500), "its rule is made again");
    assert_eq!(rule(lb_of(&p), "c0500").frontend_port, Some(6500));
    assert_eq!(
        p.problems.get("new"),
        Some(&ConfigProblem::NoAvailablePorts(1000))
    );
    assert_eq!(p.problems.len(), 1);
    assert!(p.vmss_model.is_none() && p.nic_updates.is_empty(), "{p:#?}");

    // Without a port in its status (never reported), the configuration planned first takes 6500, and c0500,
    // without a port, keeps its ipConfigurations and probe; `new` is added next to them.
    if let Some(c) = configs.iter_mut().find(|c| c.uid == "c0500") {
        c.status_port = None;
    }
    let p = plan(&vmss_pool(), &configs, &state);
    assert_eq!(p.ports.get("new"), Some(&6500));
    assert_eq!(
        p.problems.get("c0500"),
        Some(&ConfigProblem::NoAvailablePorts(1000))
    );
    assert_eq!(p.problems.len(), 1);
    let model = p.vmss_model.as_ref().expect("the model gets `new`");
    assert!(model.ip_configs.iter().any(|c| c.name == "egressgateway-c0500"));
    assert!(model.ip_configs.iter().any(|c| c.name == "egressgateway-new"));
    assert!(lb_of(&p).probes.iter().any(|pr| pr.name == "c0500"));
    assert!(
        p.nic_updates
            .iter()
            .all(|u| u.nic.ip_configs.iter().any(|c| c.name == "egressgateway-c0500"))
    );
}

#[test]
fn the_port_a_kept_configuration_advertises_stays_reserved_unless_another_rule_holds_it() {
    let (configs, mut state) = provisioned_private(2);
    // c0001's rule (6001) is gone while it is kept; its status still advertises 6001.
    if let Some(lb) = state.lb.as_mut() {
        lb.rules.retain(|r| r.name != "c0001");
    }
    let kept_c1 = Config {
        status_port: Some(6001),
        ..kept_cfg("c0001", Egress::Private)
    };
    let p = plan(
        &vmss_pool(),
        &[configs[0].clone(), kept_c1.clone(), cfg("new", Egress::Private)],
        &state,
    );
    assert_eq!(p.ports.get("new"), Some(&6002), "6001 stays c0001's");
    assert!(p.problems.is_empty());

    // A stale advertised port that an existing rule of another configuration holds stays that rule's.
    let stale = Config {
        status_port: Some(6000),
        ..kept_c1
    };
    let p = plan(
        &vmss_pool(),
        &[configs[0].clone(), stale, cfg("new", Egress::Private)],
        &state,
    );
    assert_eq!(p.ports.get("c0000"), Some(&6000));
    assert_eq!(p.ports.get("new"), Some(&6001));
}

#[test]
fn a_configuration_whose_adopted_prefix_is_gone_keeps_its_rule_and_port() {
    let mut state = with_upstream_prefix(vmss_state(2));
    converge(
        &vmss_pool(),
        &[adopted("a", UPSTREAM), cfg("b", Egress::Private)],
        &mut state,
    );
    let before = state.lb.clone().expect("load balancer");
    // The prefix is gone, so are the ipConfigurations that referenced it (ARM deletes no prefix in use).
    state.managed_prefixes.remove(UPSTREAM);
    for nic in state
        .vmss_model
        .iter_mut()
        .chain(state.instances.iter_mut().filter_map(|i| i.nic.as_mut()))
    {
        nic.ip_configs.retain(|c| c.name != "egressgateway-a");
    }
    let p = converge(
        &vmss_pool(),
        &[
            adopted("a", UPSTREAM),
            cfg("b", Egress::Private),
            cfg("c", Egress::Private),
        ],
        &mut state,
    );
    assert_eq!(
        p.problems.get("a"),
        Some(&ConfigProblem::AdoptedPrefixMissing {
            name: UPSTREAM.into()
        })
    );
    let lb = state.lb.as_ref().expect("load balancer");
    assert_eq!(rule(lb, "a"), rule(&before, "a"));
    assert_eq!(p.ports.get("c"), Some(&6002), "a's port stays taken");
    assert!(
        p.prefixes_to_create.is_empty(),
        "an adopted prefix is never made again"
    );
    assert!(
        ip_config_names(&state)
            .iter()
            .all(|names| !names.contains(&"egressgateway-a".to_string()))
    );
}

// ---------------------------------------------------------------------------------------------
// VM pools: public IPs of NICs that are gone
// ---------------------------------------------------------------------------------------------

#[test]
fn a_vm_pool_deletes_its_tagged_public_ips_of_a_nic_that_is_gone_and_no_one_elses() {
    let mut state = vm_state(2);
    converge(
        &vm_pool(),
        &[cfg("a", byo()), cfg("b", Egress::Managed)],
        &mut state,
    );
    let gone = state.vm_nics[1].name.clone();
    let of_gone: Vec<String> = ["egressgateway-b", "mine"]
        .iter()
        .map(|prefix| vm_pool_public_ip_name(prefix, &gone).to_ascii_lowercase())
        .collect();
    assert!(of_gone.iter().all(|n| state.public_ips.contains_key(n)));
    // The BYO prefix's IP of the NIC that goes was made before the tag: while its NIC exists, its name tells it
    // is ours, and it is tagged, once.
    if let Some(ip) = state.public_ips.get_mut(&of_gone[1]) {
        ip.pool = None;
    }
    let configs = [cfg("a", byo()), cfg("b", Egress::Managed)];
    let p = converge(&vm_pool(), &configs, &mut state);
    assert_eq!(
        p.public_ips_to_tag,
        vec![PublicIpCreate {
            name: of_gone[1].clone(),
            prefix_id: BYO.into()
        }]
    );
    assert_eq!(p.write_count(), 1, "{p:#?}");
    assert_eq!(state.public_ips[&of_gone[1]].pool.as_deref(), Some(POOL));
    // Others on the BYO prefix: the user's; another pool's (tagged so, named as ours would be for a NIC of that
    // name); one tagged with this pool but used by a NIC of no pool (someone attached it); one tagged with this
    // pool used by a NIC of the same name as one of the pool's but in another resource group; one named for the
    // NIC that goes but never tagged (made before the tag, and its NIC gone before a pass tagged it: the name
    // rule cannot tell it from a user's once the NIC is gone), on a BYO prefix a configuration used before.
    let nic_elsewhere = format!(
        "/subscriptions/s/resourceGroups/other-rg/providers/Microsoft.Network/networkInterfaces/{}/ipConfigurations/x",
        state.vm_nics[0].name.to_ascii_uppercase()
    );
    let others = [
        ("mine-appgw".to_string(), PublicIp::of_prefix(BYO)),
        (
            vm_pool_public_ip_name("mine", "aks-other-0-nic"),
            PublicIp {
                pool: Some("other-pool-uid".into()),
                ..PublicIp::of_prefix(BYO)
            },
        ),
        (
            "mine-attached".to_string(),
            PublicIp {
                pool: Some(POOL.into()),
                used_by: Some(
                    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/users-nic/ipConfigurations/ipconfig1"
                        .into(),
                ),
                ..PublicIp::of_prefix(BYO)
            },
        ),
        (
            "mine-elsewhere".to_string(),
            PublicIp {
                pool: Some(POOL.into()),
                used_by: Some(nic_elsewhere),
                ..PublicIp::of_prefix(BYO)
            },
        ),
        (
            vm_pool_public_ip_name("old", &gone),
            PublicIp::of_prefix(&BYO.replace("/mine", "/old")),
        ),
    ];
    let (never_tagged, rest) = others.split_last().expect("others");
    for (name, ip) in rest {
        state.public_ips.insert(name.to_ascii_lowercase(), ip.clone());
    }
    assert!(plan(&vm_pool(), &configs, &state).is_noop());
    state
        .public_ips
        .insert(never_tagged.0.to_ascii_lowercase(), never_tagged.1.clone());

    // The VM and its NIC are deleted (ARM releases the NIC's public IPs, it does not delete them).
    state.vm_nics.remove(1);
    let p = converge(&vm_pool(), &configs, &mut state);
    let mut deleted = p.public_ips_to_delete.clone();
    deleted.sort();
    assert_eq!(deleted, of_gone);
    for (name, ip) in &others {
        assert_eq!(
            state.public_ips.get(&name.to_ascii_lowercase()),
            Some(ip),
            "{name}"
        );
    }
    assert!(p.nic_updates.is_empty() && p.prefixes_to_delete.is_empty());

    // A kept configuration's public IPs stay, also those of a NIC that is gone.
    let mut state = vm_state(2);
    converge(&vm_pool(), &configs, &mut state);
    state.vm_nics.remove(1);
    let p = plan(
        &vm_pool(),
        &[kept_cfg("a", byo()), cfg("b", Egress::Managed)],
        &state,
    );
    assert_eq!(p.public_ips_to_delete, vec![of_gone[0].clone()], "b's only");
}
