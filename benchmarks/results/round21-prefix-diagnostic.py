"""Round 21 diagnostic, kept beside its output (`round21-prefix-nearest-words.txt`); not part of the library.

``dump``: run ``benchmarks.erasure_quality`` with ``AdversarialPrefixes._merge`` wrapped to save the prefix table
every 20 attack calls to ``$DUMP_PREFIX``. ``near``: for each prompt of a saved table, the best cosine of its prefix
rows to any vocabulary token and to the grammar's digit and colour words.

    DUMP_PREFIX=/tmp/p.pt python benchmarks/results/round21-prefix-diagnostic.py dump --quick --tune --seeds 100 \
        --methods scissorhands --concepts digits:seven --groups word --spread_images 0 --num_threads 1 \
        --out /tmp/seven --erase_args --config configs/erase_digits_scissorhands_adversarial_tamper.yaml --tamper_steps 0
    python benchmarks/results/round21-prefix-diagnostic.py near /tmp/p.pt [MODEL_DIR]

``near`` reads the tokenizer of MODEL_DIR (default: the embedded default's cache, ``default_model_path()``).
"""

import os
import runpy
import sys

import torch

WORDS = ("zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 "
         "red green blue yellow magenta white handwritten digit number").split()


def dump(argv: list[str]) -> None:
    sys.path.insert(0, os.getcwd())
    from pipelines import prompt_prefix

    merge = prompt_prefix.AdversarialPrefixes._merge

    def merge_and_save(self, unique, rows):
        merge(self, unique, rows)
        if self.calls % 20 == 0:
            torch.save({"prefixes": self.prefixes, "input_ids": self.input_ids, "calls": self.calls,
                        "matrix": self.text_encoder.get_input_embeddings().weight.detach().cpu()},
                       os.environ["DUMP_PREFIX"])

    prompt_prefix.AdversarialPrefixes._merge = merge_and_save
    sys.argv = ["erasure_quality", *argv]
    runpy.run_module("benchmarks.erasure_quality", run_name="__main__")


def near(path: str, model_dir: str | None) -> None:
    from transformers import CLIPTokenizer

    from pipelines.default_model import default_model_path

    saved = torch.load(path, weights_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir or default_model_path(), subfolder="tokenizer")
    prefixes, matrix = saved["prefixes"].float(), saved["matrix"].float()
    print("calls", saved["calls"], "prefixes", tuple(prefixes.shape), "vocab", tuple(matrix.shape))
    unit = matrix / matrix.norm(dim=-1, keepdim=True)
    word_ids = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in WORDS]
    for row, ids in zip(prefixes, saved["input_ids"]):
        rows = row / row.norm(dim=-1, keepdim=True)
        top = (rows @ unit.T).max(dim=0).values.topk(5)
        words = (rows @ unit[word_ids].T).max(dim=0).values
        best = sorted(zip(WORDS, words.tolist()), key=lambda pair: -pair[1])[:4]
        print(f"{tokenizer.decode(ids, skip_special_tokens=True)[:45]:45s} "
              f"top {tokenizer.convert_ids_to_tokens(top.indices.tolist())} {top.values.numpy().round(2)} "
              f"words {[(w, round(c, 2)) for w, c in best]}")


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2:])
    else:
        near(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
