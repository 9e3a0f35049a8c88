"""Fetch a hub classifier to serve instead of the default: ``python -m model.fetch ID --out DIR``.

Needs access to the Hugging Face Hub (or a mirror via HF_ENDPOINT). Without one it fails with
a one-line message and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Everything a save_pretrained classifier folder may need; no framework-specific weights
# other than safetensors/bin, no ONNX or TF/Flax copies.
ALLOW_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "pytorch_model*.bin",
)


class FetchError(RuntimeError):
    pass


def check_folder(folder: Path) -> str:
    """Return the architecture name; raise FetchError if folder is no sequence classifier."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FetchError(f"{folder} has no readable config.json") from exc
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise FetchError(
            f"{folder} is not a sequence-classification model (architectures: {archs or 'none'})"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise FetchError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin)")
    return str(archs[0])


def fetch(model_id: str, out: Path, revision: str | None = None) -> str:
    """snapshot_download model_id into out; returns the architecture name."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            repo_id=model_id,
            revision=revision,
            local_dir=str(out),
            allow_patterns=list(ALLOW_PATTERNS),
        )
    except Exception as exc:  # every hub/network failure becomes one line
        reason = (str(exc).strip().splitlines() or [""])[0]
        if len(reason) > 160:
            reason = reason[:157] + "..."
        raise FetchError(
            f"could not download {model_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {reason}); this needs hub access or HF_ENDPOINT "
            f"pointing at a mirror"
        ) from exc
    return check_folder(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.fetch",
        description="Download a Hugging Face sequence-classification model to serve "
        "(MODEL_PATH=DIR) instead of the default model.",
    )
    parser.add_argument("model_id", help="hub repository id, e.g. an org/name classifier")
    parser.add_argument("--out", type=Path, required=True, help="folder to download into")
    parser.add_argument("--revision", default=None, help="branch, tag or commit to pin")
    args = parser.parse_args(argv)
    try:
        arch = fetch(args.model_id, args.out, args.revision)
    except FetchError as exc:
        print(f"model.fetch: error: {exc}", file=sys.stderr)
        return 1
    print(f"model.fetch: {args.model_id} ({arch}) saved to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
