"""scikit-learn is the optional `train` extra: serving and scoring work without it, and training
without it says which extra to install instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a child whose imports of scikit-learn and scipy fail, as on an install without [train].
_PRELUDE = """
import sys
for name in ("sklearn", "scipy", "threadpoolctl"):
    sys.modules[name] = None  # `import name` now raises ImportError
"""


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(_PRELUDE + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_the_gateway_builds_and_scores_without_scikit_learn(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        f"""
        from pathlib import Path
        from gateway.classifier.model import load
        model = load(Path({str(REPO / "models" / "spam.npz")!r}))
        raw = b"From: a@example.org\\r\\nSubject: hello\\r\\n\\r\\nlunch tomorrow?\\r\\n"
        print("p", model.score(raw).probability)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("p ")


def test_training_without_the_extra_names_it(tmp_path: Path) -> None:
    ham, spam = tmp_path / "ham", tmp_path / "spam"
    ham.mkdir()
    spam.mkdir()
    result = _run(
        tmp_path,
        f"""
        import sys
        from gateway.cli import main
        sys.exit(main(["model", "train", "--ham", {str(ham)!r}, "--spam", {str(spam)!r},
                       "--out", {str(tmp_path / "m.npz")!r}]))
        """,
    )
    assert result.returncode == 2
    assert "pip install 'mailgate[train]'" in result.stderr
    assert "Traceback" not in result.stderr
