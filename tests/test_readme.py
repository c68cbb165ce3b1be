"""CI must run exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(bash install.sh .*?)\n```", readme)
    assert len(commands) == 2, "README gives two set-up commands"
    quickstart, tests = commands
    assert quickstart.endswith("isara align recipes/quickstart.yaml")
    assert tests.endswith('python -m pytest -m "not slow"')  # the real_model tests too, not only the quick ones
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
