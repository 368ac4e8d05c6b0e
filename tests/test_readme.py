import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_create_model_snippet_runs_offline_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(block for block in blocks if "create_model(" in block)
    exec(compile(snippet, "README.md", "exec"), {})
    assert "Total params: " in capsys.readouterr().out
