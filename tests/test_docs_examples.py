"""The Python examples of docs/api.md run as written: every ```python block, in order, in one
namespace, in a fresh working directory."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_api_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {index + 1}", "exec"), namespace)
    assert (tmp_path / "out" / "rnet-report" / "report.html").is_file()
    assert (tmp_path / "out" / "rnet-budget" / "precision_plan.json").is_file()  # constraints ran the search
    assert namespace["report"].data["accuracy"]["status"] == "measured"
