"""Build-time smoke test of the slimmed virtualenv; also writes its byte code.

Runs in the Dockerfile's builder stage after deploy/docker/slim-venv.sh:
- imports everything the service imports and runs a forward pass of a tiny
  random BERT classifier, so a build whose pruning or stripping broke torch
  fails here rather than in production;
- checks that the torch build matches the requested variant (cpu / cuda);
- leaves __pycache__ only for the modules actually imported (the runtime root
  filesystem is read-only, so Python could not cache them later, and caching
  every module of every package would add ~240 MB).

Usage: python warm_imports.py cpu|cuda
"""

from __future__ import annotations

import importlib
import sys

# Encoder architectures a text-classification model is likely to use: their
# modeling/tokenizer modules get byte code too, so the first load is quick.
ARCHITECTURES = (
    "bert",
    "distilbert",
    "roberta",
    "xlm_roberta",
    "deberta_v2",
    "electra",
    "albert",
    "mpnet",
    "modernbert",
)


def check_variant(variant: str) -> None:
    import torch

    built_with_cuda = torch.version.cuda is not None
    if variant == "cpu" and built_with_cuda:
        raise SystemExit(f"TORCH_VARIANT=cpu but torch {torch.__version__} is a CUDA build")
    if variant == "cuda" and not built_with_cuda:
        raise SystemExit(f"TORCH_VARIANT=cuda but torch {torch.__version__} has no CUDA")
    sys.stderr.write(f"torch {torch.__version__} (cuda: {torch.version.cuda})\n")


def forward_pass() -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    config.num_labels = 3
    model = BertForSequenceClassification(config)
    torch.nn.Module.eval(model)
    with torch.inference_mode():
        logits = model(input_ids=torch.randint(0, 64, (2, 5))).logits
    if tuple(logits.shape) != (2, 3) or not bool(torch.isfinite(logits).all()):
        raise SystemExit(f"forward pass gave {tuple(logits.shape)}")


def import_service_dependencies() -> None:
    for name in (
        "fastapi",
        "fastapi.responses",
        "starlette.middleware",
        "pydantic",
        "pydantic_settings",
        "uvicorn",
        "uvicorn.main",
        "uvicorn.loops.uvloop",
        "uvicorn.protocols.http.httptools_impl",
        "uvicorn.lifespan.on",
        "uvloop",
        "httptools",
        "orjson",
        "prometheus_client",
        "numpy",
        "safetensors.torch",
        "tokenizers",
        "transformers",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
    ):
        importlib.import_module(name)
    for arch in ARCHITECTURES:
        for module in (f"modeling_{arch}", f"tokenization_{arch}", f"tokenization_{arch}_fast"):
            try:
                importlib.import_module(f"transformers.models.{arch}.{module}")
            except ImportError:
                continue  # not every architecture has every module in this version


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    check_variant(variant)
    forward_pass()
    import_service_dependencies()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sys.stderr.write(
        f"warm imports ok: {len(sys.modules)} modules "
        f"({AutoModelForSequenceClassification.__name__}, {AutoTokenizer.__name__})\n"
    )


if __name__ == "__main__":
    main()
