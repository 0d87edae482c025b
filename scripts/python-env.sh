# Sourced by the scripts that run Python (install-deps.sh, test.sh, lab.sh, release.sh): the project's virtual
# environment, which scripts/install-deps.sh makes and fills from tests/chart/requirements.txt, goes first on
# PATH, so `python3` there and in everything they start (pytest, the lab's chart rendering) has the test
# packages. KEG_VENV chooses another place (default: .venv in the repository, ignored by git).
KEG_VENV="${KEG_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}"
export KEG_VENV
case ":$PATH:" in
  *":$KEG_VENV/bin:"*) ;;
  *) export PATH="$KEG_VENV/bin:$PATH" ;;
esac
