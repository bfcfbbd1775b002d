"""Files are read safely: regular files only, with hard caps per file and per load, whatever st_size says."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import load_documents, yamlsource
from orchestrator.spec.yamlsource import ReadBudget, UnreadableFile, read_capped, read_yaml_documents

GOOD = Path(__file__).resolve().parents[2] / "data" / "good"
FLEET = ("apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\n"
         "spec: {pools: [{name: a, hardware: nvidia-h100-sxm, nodes: 1}]}\n")


def _refusal(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_documents([path])
    [problem] = info.value.problems
    assert problem.file == str(path)
    return problem.message


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[str] = []
    reader = threading.Thread(target=lambda: (result.append(_refusal(fifo)), done.set()), daemon=True)
    reader.start()
    assert done.wait(10), "reading a FIFO blocked"
    assert result == ["cannot read: not a regular file (a FIFO)"]


def test_a_device_is_refused_not_read_forever() -> None:
    assert _refusal(Path("/dev/zero")) == "cannot read: not a regular file (a character device)"


def test_a_symlink_to_a_device_is_refused_as_what_it_points_to(tmp_path: Path) -> None:
    link = tmp_path / "fleet.yaml"
    link.symlink_to("/dev/zero")
    assert _refusal(link) == "cannot read: not a regular file (a character device)"


def test_a_symlink_loop_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    assert "symlink loop" in _refusal(tmp_path / "a.yaml")


def test_a_missing_file_is_named() -> None:
    assert _refusal(Path("/nonexistent/fleet.yaml")) == "cannot read: no such file or directory"


def test_inside_a_directory_a_fifo_or_dangling_link_is_reported_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "gone.yml").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SpecError) as info:
        load_documents([tmp_path])
    assert sorted((Path(p.file).name, p.message) for p in info.value.problems) == [
        ("gone.yml", "cannot read: no such file or directory"),
        ("pipe.yaml", "cannot read: not a regular file (a FIFO)")]


def test_the_per_file_limit_is_a_hard_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "MAX_FILE_BYTES", 100)
    path = tmp_path / "f.yaml"
    path.write_bytes(b"#" * 100)
    assert read_capped(path) == b"#" * 100
    path.write_bytes(b"#" * 101)
    with pytest.raises(UnreadableFile, match="larger than 100 bytes, the limit per file"):
        read_capped(path)


def test_the_load_budget_counts_every_file_together(tmp_path: Path) -> None:
    budget = ReadBudget(total_bytes=250)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.yaml")
        paths[-1].write_bytes(b"#" * 100)
    assert read_capped(paths[0], budget) and read_capped(paths[1], budget)
    with pytest.raises(UnreadableFile, match=r"exceed \d+ bytes together, the limit per load"):
        read_capped(paths[2], budget)
    assert budget.spent


def test_a_load_stops_at_its_byte_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "MAX_LOAD_BYTES", len(FLEET) * 2 + 5)
    for i in range(5):
        (tmp_path / f"{i}.yaml").write_text(FLEET.replace("name: f}", f"name: f{i}}}"))
    with pytest.raises(SpecError) as info:
        load_documents([tmp_path])
    [problem] = info.value.problems  # the files after the limit are not read
    assert problem.file.endswith("2.yaml") and "the limit per load (MAX_LOAD_BYTES)" in problem.message


def test_too_many_values_are_refused_while_composing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "MAX_NODES_PER_DOCUMENT", 50)
    text = "a: [" + ", ".join(["1"] * 1000) + "]\n"
    with pytest.raises(SpecError, match="more than 50 values, the limit per document"):
        read_yaml_documents(text, "f.yaml")


def test_values_are_counted_across_the_documents_of_a_load() -> None:
    budget = ReadBudget(values=10)
    read_yaml_documents("a: [1, 2, 3]\n", "a.yaml", budget)  # 5 values: the map, a key's value, 3 items
    with pytest.raises(SpecError, match="more than .* values, the limit per load"):
        read_yaml_documents("b: [1, 2, 3, 4, 5, 6]\n", "b.yaml", budget)
    assert budget.spent


def test_documents_are_counted_per_load() -> None:
    with pytest.raises(SpecError, match=r"f.yaml:7: more than \d+ documents, the limit per load"):
        read_yaml_documents("a: 1\n---\na: 2\n---\na: 3\n---\na: 4\n", "f.yaml", ReadBudget(documents=3))


def _model(config: str) -> str:
    return (f"apiVersion: moxin.dev/v1alpha1\nkind: Model\nmetadata: {{name: m}}\nspec:\n  configFile: {config}\n"
            "  variants: [{name: bf16, formats: {default: bf16}}]\n")


def _config_refusal(doc: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_documents([doc])
    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.path) == (str(doc), 5, "spec.configFile")
    return problem.message


def test_a_config_file_that_is_a_fifo_or_device_is_refused_at_its_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "config.json")
    doc = tmp_path / "m.yaml"
    doc.write_text(_model("config.json"))
    assert "not a regular file (a FIFO)" in _config_refusal(doc)
    doc.write_text(_model("/dev/zero"))
    assert "not a regular file (a character device)" in _config_refusal(doc)


def test_a_config_file_is_capped_like_a_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "MAX_FILE_BYTES", 1000)
    (tmp_path / "config.json").write_text((GOOD / "tiny-llama-config.json").read_text() + " " * 1000)
    doc = tmp_path / "m.yaml"
    doc.write_text(_model("config.json"))
    assert "the limit per file" in _config_refusal(doc)


@pytest.mark.parametrize("text,fragment", [
    ('{"num_hidden_layers": NaN}', "NaN is not a number moxin accepts"),
    ('{"num_hidden_layers": ' + "9" * 5000 + "}", "not JSON moxin reads"),
    ("[" * 100_000 + "]" * 100_000, "not JSON moxin reads"),
])
def test_config_json_that_python_would_accept_badly_is_refused(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "config.json").write_text(text)
    doc = tmp_path / "m.yaml"
    doc.write_text(_model("config.json"))
    assert fragment in _config_refusal(doc)
