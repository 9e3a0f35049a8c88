"""Score combinations of finished builds on the held-out split: logit ensembles and weight soups.

    .venv/bin/python -m tools.seed_ensemble DIR DIR [DIR ...]

Each DIR is a save_pretrained folder of the same architecture trained on the same split (for
example /tmp/recipe-experiments/soft, soft_ts14, soft_ts15 from tools.recipe_experiment).
Prints each folder's accuracy, then for every combination of two or more: the accuracy of the
averaged probabilities (an ensemble, k times the compute) and of one model whose weights are
the average of theirs (a "soup", one model's compute). This is how model/README.md checked
whether more compute would reach the accuracy goal.
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING

from model.data import load_split
from model.evaluate import load_folder, logits

if TYPE_CHECKING:
    import torch


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=-1) == labels).float().mean())


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    import torch

    torch.set_num_threads(2)
    _, heldout = load_split(13)
    texts = [ex.text for ex in heldout]
    labels = torch.tensor([ex.label for ex in heldout])
    loaded = {d: load_folder(d) for d in argv}
    models = {d: model for d, (model, _) in loaded.items()}
    tokenizer = loaded[argv[0]][1]
    probs = {d: logits(m, tokenizer, texts).softmax(dim=-1) for d, m in models.items()}
    for d in argv:
        sys.stdout.write(f"{d}: {accuracy(probs[d], labels):.4f}\n")
    for k in range(2, len(argv) + 1):
        for combo in itertools.combinations(argv, k):
            ensemble = accuracy(torch.stack([probs[d] for d in combo]).mean(dim=0), labels)
            states = [models[d].state_dict() for d in combo]
            soup, _ = load_folder(combo[0])
            soup.load_state_dict({key: sum(s[key] for s in states) / k for key in states[0]})
            sys.stdout.write(
                f"{' + '.join(combo)}: ensemble {ensemble:.4f}, "
                f"soup {accuracy(logits(soup, tokenizer, texts), labels):.4f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
