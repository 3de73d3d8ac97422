"""A loopback Hugging Face Hub for the simulated cluster (stdlib only).

It implements the endpoints that the real ``hf download`` CLI (huggingface_hub 1.x) uses for
full-repo and single-file downloads of model and dataset repos, at revision ``main`` or a commit sha:

- ``GET /api/{models|datasets}/{repo}[/revision/{rev}][?blobs=true]``: repo info (``sha``, ``siblings``;
  with ``blobs=true`` every sibling carries ``size``, ``blobId`` and ``lfs: {sha256, size, pointerSize}``).
- ``GET /api/{models|datasets}/{repo}/tree/{rev}[/{path}]?recursive=true``: the tree listing that
  ``snapshot_download`` reads (``type``, ``oid``, ``size``, ``path``, ``lfs: {oid, size, pointerSize}``).
  No ``xetHash`` is ever listed.
- ``POST /api/{models|datasets}/{repo}/paths-info/{rev}``: paths info.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` and ``/datasets/{repo}/resolve/{rev}/{path}``: served
  directly (200/206) with ``X-Repo-Commit``, ``ETag`` (git blob sha1 for small files, sha256 for LFS
  files), ``X-Linked-Etag`` + ``X-Linked-Size`` for LFS files, ``Content-Length`` and ``Range``
  support. The server never sends ``X-Xet-Hash`` / a ``xet-auth`` link, so hf uses plain HTTP even
  with hf_xet installed.

Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``). A gated repo answers its files only to
``Authorization: Bearer <DIR/hub_token>``: no token -> 401 GatedRepo; another ``hf_...`` token -> 403
GatedRepo (valid user, not in the authorized list); a token not shaped like ``hf_...`` -> 401
"Invalid credentials in Authorization header" on every endpoint. Repo metadata and the tree stay
public for gated repos, as on the real Hub.

Simulation endpoints: ``GET /_sim/stats`` (JSON), ``POST /_sim/reset``, ``POST /_sim/gated``
(``{"repo": ..., "gated": true}``), ``GET /_sim/repos``.

Stats format::

    {"requests": N, "bytes": B,
     "repos": {"Qwen/Qwen3-4B": {"repo_type": "model", "requests": n, "bytes": b,
                                 "files": {"config.json": {"head": h, "get": g, "bytes": b}}}}}

``bytes`` counts body bytes actually written for GET requests.

Repos are generated deterministically (seeded) into ``DIR/hub/`` on first start.

CLI: ``python -m tests.simcluster.hub --state-dir DIR --port 0`` writes ``DIR/hub.json``
``{"url", "pid", "port"}`` once listening and stops on SIGTERM.
Python: ``HubServer(state_dir).start() -> url``, ``.stop()``, ``.stats()``, ``.reset_stats()``,
``.set_gated(repo, True)``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import random
import re
import secrets
import signal
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

GENERATOR_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Model configs: the public Hugging Face config.json values of these models (data, independent of
# any slimeflow recipe).
# ---------------------------------------------------------------------------------------------
MODEL_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen3-Next-80B-A3B-Thinking": {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "decoder_sparse_step": 1,
        "eos_token_id": 151645,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 512,
        "norm_topk_prob": True,
        "num_attention_heads": 16,
        "num_experts": 512,
        "num_experts_per_tok": 10,
        "num_hidden_layers": 48,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 512,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "Qwen/Qwen3-30B-A3B": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "decoder_sparse_step": 1,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 40960,
        "max_window_layers": 48,
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": 768,
        "norm_topk_prob": True,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "Qwen/Qwen3-4B": {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9728,
        "max_position_embeddings": 40960,
        "max_window_layers": 36,
        "model_type": "qwen3",
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}

# (number of shards, approximate total bytes of the safetensors shards)
MODEL_SHARDS = {
    "Qwen/Qwen3-Next-80B-A3B-Thinking": (4, 3_400_000),
    "Qwen/Qwen3-30B-A3B": (3, 2_800_000),
    "Qwen/Qwen3-4B": (3, 2_200_000),
}

DATASETS = {
    "zhuzilin/dapo-math-17k": ("dapo-math-17k.jsonl", 50),
    "zhuzilin/aime-2024": ("aime-2024.jsonl", 30),
}

LFS_SUFFIXES = (".safetensors", ".jsonl", ".bin", ".pt", ".parquet")
LFS_NAMES = ("tokenizer.json",)

GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.jsonl filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
tokenizer.json filter=lfs diff=lfs merge=lfs -text
"""


def _is_lfs(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name in LFS_NAMES or name.endswith(LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(("slimeflow-simhub",) + parts).encode()).digest()[:8], "big")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def _safetensors(tensors: list[tuple[str, list[int]]], rng: random.Random) -> tuple[bytes, int]:
    """A valid safetensors file (BF16 tensors of random bytes). Returns (bytes, tensor data size)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + rng.randbytes(offset), offset


def _model_tensor_names(cfg: dict, layer: int) -> list[str]:
    p = f"model.layers.{layer}."
    names = [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    mt = cfg["model_type"]
    if mt == "qwen3_next" and (layer + 1) % cfg.get("full_attention_interval", 4) != 0:
        names += [p + "linear_attn.in_proj_qkvz.weight", p + "linear_attn.in_proj_ba.weight",
                  p + "linear_attn.conv1d.weight", p + "linear_attn.A_log", p + "linear_attn.dt_bias",
                  p + "linear_attn.norm.weight", p + "linear_attn.out_proj.weight"]
    else:
        names += [p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight",
                  p + "self_attn.o_proj.weight", p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
    if "num_experts" in cfg:
        names += [p + "mlp.gate.weight"]
        names += [p + f"mlp.experts.{e}.{w}.weight" for e in range(2) for w in ("gate_proj", "up_proj", "down_proj")]
        if cfg.get("shared_expert_intermediate_size"):
            names += [p + "mlp.shared_expert.gate_proj.weight", p + "mlp.shared_expert.up_proj.weight",
                      p + "mlp.shared_expert.down_proj.weight", p + "mlp.shared_expert_gate.weight"]
    else:
        names += [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
    return names


def _gen_model(repo_id: str) -> dict[str, bytes]:
    cfg = MODEL_CONFIGS[repo_id]
    n_shards, total = MODEL_SHARDS[repo_id]
    rng = random.Random(_seed("model", repo_id))
    files: dict[str, bytes] = {}
    name = repo_id.split("/")[1]
    files[".gitattributes"] = GITATTRIBUTES.encode()
    files["LICENSE"] = (
        "                                 Apache License\n                           Version 2.0, January 2004\n"
        "                        http://www.apache.org/licenses/\n\n(simulated hub copy)\n"
    ).encode()
    files["README.md"] = (
        f"---\nlibrary_name: transformers\nlicense: apache-2.0\npipeline_tag: text-generation\n---\n\n# {name}\n\n"
        "Simulated repository served by the slimeflow test hub. The safetensors shards hold random bytes.\n"
    ).encode()
    files["config.json"] = _json_bytes(cfg)
    gen = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
           "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": cfg["transformers_version"]}
    files["generation_config.json"] = _json_bytes(gen)
    files["tokenizer_config.json"] = _json_bytes({
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        "chat_template": "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
                         " + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
                         "{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    })
    vocab = {f"tok{i}": i for i in range(2000)}
    files["vocab.json"] = json.dumps(vocab, separators=(",", ":")).encode()
    files["merges.txt"] = ("#version: 0.2\n" + "".join(f"t ok{i}\n" for i in range(1000))).encode()
    files["tokenizer.json"] = _json_bytes({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 151643, "content": "<|endoftext|>", "special": True},
                         {"id": 151644, "content": "<|im_start|>", "special": True},
                         {"id": 151645, "content": "<|im_end|>", "special": True}],
        "model": {"type": "BPE", "vocab": vocab, "merges": [f"t ok{i}" for i in range(1000)]},
    })
    # Shards: embed + layers + norm + lm_head, spread over n_shards.
    entries: list[str] = ["model.embed_tokens.weight"]
    for layer in range(cfg["num_hidden_layers"]):
        entries += _model_tensor_names(cfg, layer)
    entries.append("model.norm.weight")
    if not cfg.get("tie_word_embeddings"):
        entries.append("lm_head.weight")
    per_tensor = max(4, total // len(entries) // 2 // 64)  # elements per row of 64
    shapes = {e: [per_tensor, 64] if not e.endswith(("norm.weight", "A_log", "dt_bias")) else [64] for e in entries}
    chunk = (len(entries) + n_shards - 1) // n_shards
    weight_map: dict[str, str] = {}
    total_size = 0
    for s in range(n_shards):
        shard_name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = entries[s * chunk:(s + 1) * chunk]
        data, size = _safetensors([(e, shapes[e]) for e in part], rng)
        files[shard_name] = data
        total_size += size
        for e in part:
            weight_map[e] = shard_name
    files["model.safetensors.index.json"] = _json_bytes(
        {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))})
    return files


DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    "Remember to put your answer on its own line after \"Answer:\"."
)


def _gen_dataset(repo_id: str) -> dict[str, bytes]:
    fname, n = DATASETS[repo_id]
    rng = random.Random(_seed("dataset", repo_id))
    lines = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b, m = rng.randint(2, 40), rng.randint(5, 200), rng.randint(7, 1000)
            problem, label = f"What is the remainder when ${a}^{{{b}}}$ is divided by ${m}$?", str(pow(a, b, m))
        elif kind == 1:
            x, y = rng.randint(2, 60), rng.randint(2, 60)
            problem = (f"Let $x$ and $y$ be positive integers with $x+y={x + y}$ and $xy={x * y}$. "
                       "Find $x^2+y^2$.")
            label = str(x * x + y * y)
        else:
            k = rng.randint(3, 12)
            problem = f"How many subsets of $\\{{1,2,\\ldots,{k}\\}}$ contain no two consecutive integers?"
            fa, fb = 1, 2
            for _ in range(k - 1):
                fa, fb = fb, fa + fb
            label = str(fb)
        if repo_id.endswith("aime-2024"):
            content = problem + "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
        else:
            content = DAPO_TEMPLATE.format(problem=problem)
        lines.append(json.dumps({"prompt": [{"content": content, "role": "user"}], "label": label},
                                ensure_ascii=False))
    name = repo_id.split("/")[1]
    return {
        ".gitattributes": GITATTRIBUTES.encode(),
        "README.md": f"---\nlicense: apache-2.0\n---\n\n# {name}\n\nSimulated dataset for slimeflow tests.\n".encode(),
        fname: ("\n".join(lines) + "\n").encode(),
    }


def generate(hub_dir: Path) -> dict:
    """Generate all repos into hub_dir (deterministic). Returns the index."""
    hub_dir.mkdir(parents=True, exist_ok=True)
    index: dict = {"version": GENERATOR_VERSION, "repos": {}}
    base_time = _dt.datetime(2025, 9, 15, 12, 0, 0, tzinfo=_dt.timezone.utc)
    todo = [("model", r, _gen_model) for r in MODEL_CONFIGS] + [("dataset", r, _gen_dataset) for r in DATASETS]
    for i, (rtype, repo_id, fn) in enumerate(todo):
        files = fn(repo_id)
        root = hub_dir / (rtype + "s") / repo_id
        root.mkdir(parents=True, exist_ok=True)
        meta_files = []
        for path in sorted(files):
            data = files[path]
            dst = root / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
            entry = {"path": path, "size": len(data)}
            if _is_lfs(path):
                sha = hashlib.sha256(data).hexdigest()
                ptr = lfs_pointer(sha, len(data))
                entry["blob_id"] = git_blob_sha1(ptr)
                entry["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": len(ptr)}
            else:
                entry["blob_id"] = git_blob_sha1(data)
            meta_files.append(entry)
        tree_id = hashlib.sha1(json.dumps(meta_files, sort_keys=True).encode()).hexdigest()
        sha = hashlib.sha1(f"commit {repo_id} {tree_id}".encode()).hexdigest()
        index["repos"][repo_id] = {
            "repo_type": rtype,
            "sha": sha,
            "last_modified": (base_time + _dt.timedelta(days=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "files": meta_files,
        }
    tmp = hub_dir / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, hub_dir / "index.json")
    return index


def load_or_generate(hub_dir: Path) -> dict:
    try:
        index = json.loads((hub_dir / "index.json").read_text())
        if index.get("version") == GENERATOR_VERSION:
            return index
    except (OSError, ValueError):
        pass
    return generate(hub_dir)


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class _HubState:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.hub_dir = self.state_dir / "hub"
        self.index = load_or_generate(self.hub_dir)
        token_file = self.state_dir / "hub_token"
        if not token_file.exists():
            tmp = token_file.with_name("hub_token.tmp")
            tmp.write_text("hf_sim" + secrets.token_hex(14) + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, token_file)
        self.token = token_file.read_text().strip()
        self.gated_file = self.hub_dir / "gated.json"
        self._gated_cache: tuple[float, set] = (-1.0, set())
        self.lock = threading.Lock()
        self._stats = self._empty_stats()

    @staticmethod
    def _empty_stats() -> dict:
        return {"requests": 0, "bytes": 0, "repos": {}}

    # gated repos live in a file so that any process may flip them
    def gated(self) -> set:
        try:
            mtime = self.gated_file.stat().st_mtime
        except OSError:
            return set()
        if mtime != self._gated_cache[0]:
            try:
                repos = set(json.loads(self.gated_file.read_text()))
            except (OSError, ValueError):
                repos = set()
            self._gated_cache = (mtime, repos)
        return self._gated_cache[1]

    def set_gated(self, repo: str, gated: bool) -> None:
        with self.lock:
            repos = set(self.gated())
            (repos.add if gated else repos.discard)(repo)
            tmp = self.gated_file.with_name("gated.json.tmp")
            tmp.write_text(json.dumps(sorted(repos)))
            os.replace(tmp, self.gated_file)
            self._gated_cache = (-1.0, set())

    def count(self, repo: str | None, path: str | None, method: str, nbytes: int = 0) -> None:
        with self.lock:
            st = self._stats
            if method != "BYTES":
                st["requests"] += 1
            st["bytes"] += nbytes
            if repo is None:
                return
            info = self.index["repos"].get(repo, {})
            r = st["repos"].setdefault(repo, {"repo_type": info.get("repo_type"), "requests": 0, "bytes": 0,
                                              "files": {}})
            if method != "BYTES":
                r["requests"] += 1
            r["bytes"] += nbytes
            if path is not None:
                f = r["files"].setdefault(path, {"head": 0, "get": 0, "bytes": 0})
                if method == "HEAD":
                    f["head"] += 1
                elif method == "GET":
                    f["get"] += 1
                f["bytes"] += nbytes

    def stats(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self._stats))

    def reset(self) -> None:
        with self.lock:
            self._stats = self._empty_stats()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimHub/1.0"
    hub: _HubState  # set on subclass

    def log_message(self, fmt, *args):  # quiet; set SIMHUB_LOG=1 to see requests
        if os.environ.get("SIMHUB_LOG"):
            sys.stderr.write("simhub: " + fmt % args + "\n")

    # -- helpers -------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "Root=1-" + secrets.token_hex(12))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, code: int, obj, headers: dict | None = None):
        self._send(code, json.dumps(obj).encode(), headers)

    def _error(self, code: int, error_code: str | None, message: str, extra: dict | None = None):
        headers = {"X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        headers.update(extra or {})
        self._json(code, {"error": message}, headers)

    def _auth(self) -> tuple[str, bool]:
        """('none'|'valid'|'other'|'invalid', ok)"""
        h = self.headers.get("Authorization")
        if not h:
            return "none", True
        if not h.startswith("Bearer "):
            return "invalid", False
        tok = h[len("Bearer "):].strip()
        if tok == self.hub.token:
            return "valid", True
        if tok.startswith("hf_"):
            return "other", True
        return "invalid", False

    def _repo(self, repo_type: str, repo_id: str):
        info = self.hub.index["repos"].get(repo_id)
        if info is None or info["repo_type"] != repo_type:
            self._error(401 if self._auth()[0] == "none" else 404, "RepoNotFound", "Repository not found")
            return None
        return info

    def _rev(self, info: dict, rev: str):
        rev = unquote(rev)
        if rev == "main" or rev == info["sha"]:
            return info["sha"]
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # -- dispatch ------------------------------------------------------------------------
    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self):
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self):
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query)
        if path.startswith("/_sim/"):
            return self._sim(path, query)
        if not self._auth()[1]:
            self._body()
            return self._error(401, None, "Invalid credentials in Authorization header")
        m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?/?$", path)
        if m:
            rtype = m.group(1)[:-1]
            repo_id = unquote(m.group(2))
            what, rev, sub = m.group(3), m.group(4) or "main", m.group(5)
            if self.command == "POST" and what != "paths-info":
                return self._error(405, None, "Method not allowed")
            info = self._repo(rtype, repo_id)
            if info is None:
                return
            self.hub.count(repo_id, None, "API")
            sha = self._rev(info, rev)
            if sha is None:
                return
            if what in (None, "revision"):
                return self._json(200, self._repo_info(repo_id, info, blobs=query.get("blobs", [""])[0].lower()
                                                       in ("1", "true")))
            if what == "tree":
                prefix = unquote(sub.lstrip("/")) if sub else ""
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._json(200, self._tree(info, prefix, recursive))
            # paths-info
            body = self._body().decode()
            form = parse_qs(body)
            wanted = form.get("paths", [])
            if not wanted and body.strip().startswith("{"):
                wanted = json.loads(body).get("paths", [])
            return self._json(200, [e for e in self._tree(info, "", True, dirs=True) if e["path"] in wanted])
        m = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m and self.command in ("GET", "HEAD"):
            rtype = "dataset" if m.group(1) else "model"
            return self._resolve(rtype, unquote(m.group(2)), m.group(3), unquote(m.group(4)))
        self._body()
        self._error(404, None, "Not Found")

    def _sim(self, path: str, query: dict):
        if path == "/_sim/stats" and self.command == "GET":
            return self._json(200, self.hub.stats())
        if path == "/_sim/reset" and self.command == "POST":
            self._body()
            self.hub.reset()
            return self._json(200, {"ok": True})
        if path == "/_sim/gated" and self.command == "POST":
            req = json.loads(self._body() or b"{}")
            self.hub.set_gated(req["repo"], bool(req.get("gated", True)))
            return self._json(200, {"ok": True, "gated": sorted(self.hub.gated())})
        if path == "/_sim/repos" and self.command == "GET":
            return self._json(200, self.hub.index)
        self._error(404, None, "Not Found")

    # -- payloads ------------------------------------------------------------------------
    def _repo_info(self, repo_id: str, info: dict, blobs: bool) -> dict:
        gated = repo_id in self.hub.gated()
        siblings = []
        for f in info["files"]:
            s = {"rfilename": f["path"]}
            if blobs:
                s["blobId"] = f["blob_id"]
                s["size"] = f["size"]
                if "lfs" in f:
                    s["lfs"] = dict(f["lfs"])
            siblings.append(s)
        used = sum(f["size"] for f in info["files"])
        author = repo_id.split("/")[0]
        d = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": author,
            "sha": info["sha"],
            "lastModified": info["last_modified"],
            "createdAt": info["last_modified"],
            "private": False,
            "disabled": False,
            "gated": "manual" if gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": used,
        }
        if info["repo_type"] == "model":
            d.update({"modelId": repo_id, "library_name": "transformers", "pipeline_tag": "text-generation",
                      "config": {"architectures": MODEL_CONFIGS.get(repo_id, {}).get("architectures"),
                                 "model_type": MODEL_CONFIGS.get(repo_id, {}).get("model_type")}})
        return d

    def _tree(self, info: dict, prefix: str, recursive: bool, dirs: bool = True) -> list:
        out, seen_dirs = [], set()
        pre = prefix.rstrip("/") + "/" if prefix else ""
        for f in info["files"]:
            p = f["path"]
            if pre and not p.startswith(pre):
                continue
            rest = p[len(pre):]
            if "/" in rest:
                d = pre + rest.split("/", 1)[0]
                if dirs and d not in seen_dirs:
                    seen_dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                "path": d})
                if not recursive:
                    continue
            e = {"type": "file", "oid": f["blob_id"], "size": f["size"], "path": p}
            if "lfs" in f:
                e["lfs"] = {"oid": f["lfs"]["sha256"], "size": f["lfs"]["size"],
                            "pointerSize": f["lfs"]["pointerSize"]}
            out.append(e)
        return out

    def _resolve(self, rtype: str, repo_id: str, rev: str, path: str):
        info = self._repo(rtype, repo_id)
        if info is None:
            return
        sha = self._rev(info, rev)
        if sha is None:
            return
        entry = next((f for f in info["files"] if f["path"] == path), None)
        self.hub.count(repo_id, path if entry else None, self.command)
        if repo_id in self.hub.gated():
            who = self._auth()[0]
            label = "model" if rtype == "model" else "dataset"
            if who == "none":
                return self._error(401, "GatedRepo",
                                   f"Access to {label} {repo_id} is restricted. You must have access to it and be "
                                   "authenticated to access it. Please log in.",
                                   {"X-Repo-Commit": sha})
            if who != "valid":
                return self._error(403, "GatedRepo",
                                   f"Access to {label} {repo_id} is restricted and you are not in the authorized "
                                   f"list. Visit https://huggingface.co/{'datasets/' if rtype == 'dataset' else ''}"
                                   f"{repo_id} to ask for access.",
                                   {"X-Repo-Commit": sha})
        if entry is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        fpath = self.hub.hub_dir / (rtype + "s") / repo_id / path
        size = entry["size"]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Vary": "Origin, Accept, Range"}
        if "lfs" in entry:
            headers["ETag"] = f'"{entry["lfs"]["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["sha256"]}"'
            headers["X-Linked-Size"] = str(size)
            headers["Content-Disposition"] = f'inline; filename="{path.rsplit("/", 1)[-1]}";'
            ctype = "binary/octet-stream"
        else:
            headers["ETag"] = f'"{entry["blob_id"]}"'
            ctype = "text/plain; charset=utf-8"
        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            code = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        try:
            with open(fpath, "rb") as fh:
                fh.seek(start)
                while sent < length:
                    chunk = fh.read(min(256 * 1024, length - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        finally:
            self.hub.count(repo_id, path, "BYTES", sent)


class HubServer:
    """In-process hub: ``HubServer(state_dir).start() -> url``."""

    def __init__(self, state_dir, port: int = 0, host: str = "127.0.0.1"):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.state = _HubState(self.state_dir)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    @property
    def token(self) -> str:
        return self.state.token

    def start(self, write_info: bool = True) -> str:
        handler = type("_BoundHandler", (_Handler,), {"hub": self.state})
        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="simhub", daemon=True)
        self._thread.start()
        if write_info:
            tmp = self.state_dir / "hub.json.tmp"
            tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid(), "port": self.port}))
            os.replace(tmp, self.state_dir / "hub.json")
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def stats(self) -> dict:
        return self.state.stats()

    def reset_stats(self) -> None:
        self.state.reset()

    def set_gated(self, repo: str, gated: bool = True) -> None:
        self.state.set_gated(repo, gated)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster.hub", description="simulated Hugging Face Hub")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    srv = HubServer(args.state_dir, port=args.port, host=args.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    url = srv.start()
    print(f"simhub listening on {url}", flush=True)
    while not stop.wait(0.5):
        pass
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
