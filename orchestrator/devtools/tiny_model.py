"""Deterministic tiny checkpoints that the real engines (vLLM, mlx-lm) can load and serve.

Where it sits: a developer tool beside the pipeline, used by integration tests and local runs. It writes
small Hugging Face checkpoints with the real architectures of the catalog (Llama, GLM-4.5 MoE, Qwen3 MoE)
and random weights, so the serving path runs for real with no hub download; ``checkpoint_size`` reads
back what was written, so tests can compare the estimator with the bytes on disk.

torch, transformers and tokenizers are imported inside the functions that need them: importing this
module costs nothing, and ``checkpoint_size`` needs none of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHS = ("llama", "glm4-moe", "qwen3-moe")

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "glm4-moe": "Glm4MoeForCausalLM",
    "qwen3-moe": "Qwen3MoeForCausalLM",
}

# The base frequencies of the real families (Llama 3.1, GLM-4.5, Qwen3).
_ROPE_THETA = {"llama": 500000.0, "glm4-moe": 1000000.0, "qwen3-moe": 1000000.0}

_INIT_STD = 0.02

# transformers 5 saves some fields under its own names; the published configs (and mlx-lm, and
# transformers 4) use these. Qwen3-MoE: "num_experts", which transformers 5 writes as "num_local_experts".
_PUBLISHED_NAMES = {"qwen3-moe": {"num_local_experts": "num_experts"}}

# Token ids 0.. in this order; the chat template below refers to the role markers by name.
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS[:3]

# Byte-level BPE: 256 byte tokens and the special tokens come before any merge.
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The training text of the tokenizer. Fixed: changing it changes every generated tokenizer.
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A model variant is a model in one numeric format, served by one engine.",
    "Hello, how are you today? I am fine, thank you.",
    "The orchestrator places each deployment on a pool of accelerators.",
    "Tokens per second measure how fast the model generates text.",
    "The key and value cache grows with the length of the context.",
    "Mixture of experts models route every token to a few experts.",
    "Quantization stores weights in fewer bits: eight, four or three.",
    "Please write a short poem about the sea and the sky.",
    "What is the capital of France? The capital of France is Paris.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.71 42",
    'def hello(name):\n    return f"Hello, {name}!"\n',
    "for i in range(10):\n    print(i * i)\n",
    '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}',
    "The weather is sunny in the morning and rainy in the evening.",
    "She reads a book in the library while he writes a letter at home.",
    "Large language models predict the next token from the previous ones.",
    "A replica serves requests; the router spreads the load across replicas.",
    "Latency, throughput and cost are the three numbers an operator watches.",
    "The scheduler batches prompts and decodes many sequences at once.",
    "Memory holds the weights, the activations and the cache.",
    "Once upon a time there was a small robot who loved to count stars.",
    "Good morning! Good afternoon! Good evening! Good night!",
    "Why is the sky blue? Because air scatters blue light more than red light.",
    "Summarize the following text in one sentence.",
    "Translate to French: the cat sleeps on the warm window sill.",
    "Le chat dort sur le rebord chaud de la fenêtre.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "user: hello assistant: hello, how can I help you?",
    "system: you are a helpful assistant. user: tell me a joke.",
    "Rain, snow, wind and sun; spring, summer, autumn and winter.",
    "Apples, oranges, bananas, grapes, pears and plums are fruits.",
    "The test passed. The test failed. Run the tests again.",
    "Error: out of memory. Reduce the batch size or the context length.",
    "Red, green, blue, yellow, black, white, purple and orange.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.",
    "January, February, March, April, May, June, July, August.",
    "The end.",
)


@dataclass(frozen=True)
class CheckpointSize:
    """What the safetensors files of a checkpoint hold, read from their headers."""

    parameters: int
    """Stored elements summed over every tensor (for a quantized MLX checkpoint: packed words, scales and
    biases, not the logical weight count)."""
    payload_bytes: int
    """Sum of the tensors' byte sizes: the files' size minus their headers."""
    tensors: int
    """Number of tensors."""
    bytes_by_dtype: dict[str, int]
    """payload_bytes split by safetensors dtype ("BF16", "F32", "U32", ...)."""


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file, without loading any tensor (and without torch)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def checkpoint_size(model_dir: Path) -> CheckpointSize:
    """Exact parameter count and payload bytes of the ``*.safetensors`` files directly in ``model_dir``."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {model_dir}")
    parameters = payload = tensors = 0
    by_dtype: dict[str, int] = {}
    for path in files:
        for name, info in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            parameters += math.prod(info["shape"])
            payload += end - start
            tensors += 1
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + end - start
    return CheckpointSize(parameters, payload, tensors, dict(sorted(by_dtype.items())))


def generate(
    arch: str,
    out: Path,
    *,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 64,
    intermediate: int = 256,
    moe_intermediate: int = 64,
    experts: int = 4,
    experts_per_token: int = 2,
    shared_experts: int = 1,
    first_dense: int = 1,
    vocab: int = 512,
    seed: int = 0,
    max_position: int = 4096,
) -> Path:
    """Write a random-weight Hugging Face checkpoint of ``arch`` to ``out`` and return ``out``.

    Same arguments, byte-identical ``model.safetensors`` (for a given torch version). Weights are bf16
    except GLM's router ``e_score_correction_bias``, which stays F32 as in the released GLM-4.5
    checkpoints. ``shared_experts`` and ``first_dense`` apply to glm4-moe only; the MoE arguments are
    ignored for llama. ``out`` is built in a temporary directory beside it and renamed into place,
    replacing an existing ``out``.

    The tokenizer is a byte-level BPE trained on ``CORPUS`` with a chat template, padded to exactly
    ``vocab`` ids so that every sampled id decodes. vLLM's CPU attention kernel rejects head_dim 16;
    64 works.
    """
    _check_arguments(
        arch, hidden, heads, kv_heads, head_dim, experts, experts_per_token, first_dense, layers, vocab
    )
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    tokenizer = _train_tokenizer(vocab)
    ids = {token: SPECIAL_TOKENS.index(token) for token in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)}
    config = _hf_config(
        arch,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        moe_intermediate=moe_intermediate,
        experts=experts,
        experts_per_token=experts_per_token,
        shared_experts=shared_experts,
        first_dense=first_dense,
        vocab=vocab,
        max_position=max_position,
        pad_id=ids[PAD_TOKEN],
        bos_id=ids[BOS_TOKEN],
        eos_id=ids[EOS_TOKEN],
    )
    # Build on the meta device (no memory, no transformers init), then allocate bf16 storage and fill it
    # ourselves: fast for hundreds of millions of parameters, and independent of transformers' init.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    _fill_weights(model, f"{arch}:{seed}")

    with _atomic_dir(out) as tmp:
        model.save_pretrained(tmp, max_shard_size="1000GB")
        _finish_config(tmp / "config.json", arch)
        _write_json(
            tmp / "generation_config.json",
            {
                "bos_token_id": ids[BOS_TOKEN],
                "eos_token_id": ids[EOS_TOKEN],
                "pad_token_id": ids[PAD_TOKEN],
            },
        )
        _save_tokenizer(tokenizer, tmp, max_position)
    return out


def convert_mlx(
    hf_dir: Path,
    out: Path,
    bits: int | None,
    group_size: int = 64,
    *,
    python: str = sys.executable,
    timeout_s: float = 600.0,
) -> Path:
    """Convert a Hugging Face checkpoint to MLX with ``python -m mlx_lm convert``; return ``out``.

    ``bits`` None keeps bf16 weights; otherwise affine group quantization with ``bits`` and
    ``group_size``. ``python`` is the interpreter that has mlx-lm (another venv's, if need be).
    ``out`` is written beside itself and renamed into place, replacing an existing ``out``.
    Raises ``RuntimeError`` with the tail of mlx-lm's output when the conversion fails.
    """
    out = Path(out)
    with _atomic_dir(out) as tmp:
        tmp.rmdir()  # mlx-lm refuses an existing path; it recreates this unique one
        argv = [
            python,
            "-m",
            "mlx_lm",
            "convert",
            "--hf-path",
            str(hf_dir),
            "--mlx-path",
            str(tmp),
            "--dtype",
            "bfloat16",
        ]
        if bits is not None:
            argv += ["-q", "--q-bits", str(bits), "--q-group-size", str(group_size)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-4000:]
            raise RuntimeError(f"mlx_lm convert failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")
    return out


def _check_arguments(
    arch: str,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    experts: int,
    experts_per_token: int,
    first_dense: int,
    layers: int,
    vocab: int,
) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    for name, value in (
        ("layers", layers),
        ("hidden", hidden),
        ("heads", heads),
        ("kv_heads", kv_heads),
        ("head_dim", head_dim),
        ("experts", experts),
        ("experts_per_token", experts_per_token),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if arch != "llama" and experts_per_token > experts:
        raise ValueError(f"experts_per_token ({experts_per_token}) exceeds experts ({experts})")
    if arch == "glm4-moe" and not 0 <= first_dense <= layers:
        raise ValueError(f"first_dense ({first_dense}) must lie in 0..layers ({layers})")
    if vocab < MIN_VOCAB:
        raise ValueError(f"vocab must be at least {MIN_VOCAB} (bytes + special tokens), got {vocab}")


def _hf_config(
    arch: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate: int,
    moe_intermediate: int,
    experts: int,
    experts_per_token: int,
    shared_experts: int,
    first_dense: int,
    vocab: int,
    max_position: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
):
    from transformers import Glm4MoeConfig, LlamaConfig, Qwen3MoeConfig

    common = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position,
        "tie_word_embeddings": False,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }
    rope = {"rope_type": "default", "rope_theta": _ROPE_THETA[arch]}
    if arch == "llama":
        config = LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters=rope)
    elif arch == "glm4-moe":
        config = Glm4MoeConfig(
            **common,
            rms_norm_eps=1e-5,
            rope_parameters={**rope, "partial_rotary_factor": 0.5},
            partial_rotary_factor=0.5,
            moe_intermediate_size=moe_intermediate,
            n_routed_experts=experts,
            num_experts_per_tok=experts_per_token,
            n_shared_experts=shared_experts,
            first_k_dense_replace=first_dense,
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=1.0,
            attention_bias=True,
            use_qk_norm=False,
            num_nextn_predict_layers=0,
        )
    else:
        config = Qwen3MoeConfig(
            **common,
            rms_norm_eps=1e-6,
            rope_parameters=rope,
            moe_intermediate_size=moe_intermediate,
            num_experts=experts,
            num_experts_per_tok=experts_per_token,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
        )
    config.architectures = [ARCHITECTURES[arch]]
    return config


def _fill_weights(model, salt: str) -> None:
    """Norm weights 1, biases and buffers 0, every other tensor N(0, 0.02^2).

    Each tensor draws from its own generator, seeded from ``salt`` (arch and seed) and the tensor's
    name, so its values do not depend on the order of the others, and two archs never share weights.
    """
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            elif leaf in ("bias", "e_score_correction_bias") or tensor.dim() < 2:
                tensor.zero_()
            else:
                digest = hashlib.sha256(f"{salt}/{name}".encode()).digest()
                generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
                tensor.normal_(0.0, _INIT_STD, generator=generator)


def _finish_config(path: Path, arch: str) -> None:
    """Make config.json read like the published ones, for mlx-lm and transformers 4 as well as 5.

    Copies the rope settings to the top level (transformers 5 nests them under ``rope_parameters``),
    writes ``torch_dtype`` beside ``dtype`` and restores the published field names.
    """
    config = json.loads(path.read_text())
    for saved, published in _PUBLISHED_NAMES.get(arch, {}).items():
        if saved in config:
            config[published] = config.pop(saved)
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope:
        config.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    config["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    config["torch_dtype"] = config.get("dtype", "bfloat16")
    _write_json(path, config)


def _train_tokenizer(vocab: int):
    """A byte-level BPE trained on CORPUS, padded with never-merged filler tokens to exactly ``vocab``.

    The padding makes every id the model can sample decodable.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)

    state = json.loads(tokenizer.to_str())
    table = state["model"]["vocab"]
    index = 0
    while len(table) < vocab:
        filler = f"<unused{index}>"
        index += 1
        if filler not in table:
            table[filler] = len(table)
    return Tokenizer.from_str(json.dumps(state))


def _save_tokenizer(tokenizer, directory: Path, max_position: int) -> None:
    """tokenizer.json plus the config files every transformers version (4.x and 5.x) can read."""
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    _write_json(
        directory / "tokenizer_config.json",
        {
            "added_tokens_decoder": added,
            **special,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "model_max_length": max_position,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _write_json(directory / "special_tokens_map.json", special)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh directory beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the result is an ordinary directory
    try:
        yield tmp
        for path in tmp.rglob("*"):  # safetensors writes 0600; engines may run as another user
            if path.is_file():
                path.chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
