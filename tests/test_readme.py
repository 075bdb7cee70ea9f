import re

import pytest
from helpers import REPO


def readme_snippet(heading: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_few_shot_data_snippet_runs(smollm2_tokenizer, capsys):
    exec(compile(readme_snippet("Few-shot data"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    counts = eval(out.splitlines()[0])
    assert set(counts) == {"corporation", "creative-work", "group", "location", "person", "product"}
    assert min(counts.values()) >= 5
    assert out.splitlines()[1].startswith("<im_start> I can extract entities for you, the extracted entities are")
