"""Write the general-text corpus the CPU demo trains its SAE on: the embedded model writes varied
stories, dialogues, explanations, letters and how-tos from topic prompts (no hub data here).

Made with (resumable; ~80-110 new tokens/s on 2 CPU cores, so run it in the background):
    .venv/bin/python scripts/make_general_corpus.py --tokens 260000 \
        --out labeling/data/general_corpus.jsonl.gz --work .cache/general_corpus.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.generation import chat_prompt, generate  # noqa: E402
from sae.models import load_model  # noqa: E402

STYLES = [
    "Write a short story about {s}.",
    "Write a dialogue between two people about {s}.",
    "Explain {s} to a curious student.",
    "Write a news report about {s}.",
    "Write a letter to a friend about {s}.",
    "Give step-by-step instructions related to {s}.",
    "Describe {s} in detail.",
    "Write a blog post about {s}.",
]
SUBJECTS = """a lighthouse keeper|a chemistry lesson|a lost umbrella|a chess tournament|the history of bread|
how volcanoes form|a small-town bakery|a trip to the mountains|learning to play the violin|a city bus route|
the water cycle|a football match|an old library|a robot that cleans windows|the planet Mars|a farmers' market|
a job at a newspaper|a birthday party|how bees make honey|a storm at sea|a museum of clocks|a new smartphone|
the Roman Empire|a marathon runner|a village festival|photosynthesis|a broken washing machine|a road trip|
a science fair|a family dinner|the invention of the printing press|a detective solving a case|a summer camp|
a hospital night shift|a train station|how computers store data|a painter's studio|a snowy winter morning|
a school election|a fishing boat|the Great Wall of China|a recipe for soup|a lost cat|a space station|
a tailor's shop|an orchestra rehearsal|how airplanes fly|a garden in spring|a courtroom|a quiet café|
a mountain rescue|the life of a tree|a programming contest|an apartment move|a wedding|a desert caravan|
an ancient map|a car repair garage|the ocean floor|a spelling bee|a bicycle race|a coral reef|a power outage|
a new neighbor|a history exam|a night at the theater|a solar eclipse|a pizza restaurant|a hiking accident|
the stock market|a dentist appointment|a haunted house|a startup company|a thunderstorm|a zoo keeper|
medieval castles|a jazz club|climate and weather|a university lecture|a campfire|a pet shop|a lost wallet|
a farm in autumn|electric cars|a soccer coach|a trip to the beach|the human heart|a poetry reading|
a city council meeting|an art museum|a frozen lake|a long flight|a kitchen fire drill|a recycling plant|
a first day at work|a guitar lesson|the moon landing|a family reunion|a rainforest|a flea market|
a volunteer project|a newspaper delivery route|the rules of basketball|an old photograph|a ferry crossing|
a pharmacy|a book club|ancient Egypt|a video game tournament|a bakery contest|a police station|
how vaccines work|a skating rink|a post office|a mountain village|a bridge construction|a science museum|
a teacher's last day|the Industrial Revolution|a grocery delivery|an elevator ride|a dog show|
a wind farm|a summer wedding|a chess club|a broken bicycle|a radio station|an island holiday|
the periodic table|a kindergarten class|a tennis match|a hotel lobby|a bookshop|a train delay|
a garden party|a sailing lesson|the French Revolution|a cooking class|a camping trip|a paper mill|
a laboratory accident|a talent show|a crowded subway|a hospital birth|a retirement party|a moving truck|
a vegetable garden|the history of chess|an airport lounge|a quiet Sunday|an ice cream shop|a lost key""".replace("\n", "").split("|")


def prompts(seed: int = 0):
    """Every style x subject once, in a seeded order, then again with new seeds for variety."""
    for rep in itertools.count():
        combos = [(st, su.strip()) for st in STYLES for su in SUBJECTS]
        random.Random(seed + rep).shuffle(combos)
        for st, su in combos:
            yield st.format(s=su)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=260_000)
    ap.add_argument("--out", default="labeling/data/general_corpus.jsonl.gz")
    ap.add_argument("--work", default=".cache/general_corpus.jsonl", help="resumable plain JSONL being written")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_flush_denormal(True)
    lm = load_model()
    work = Path(args.work)
    work.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in work.open()] if work.exists() else []
    total = sum(r["n_tokens"] for r in done)
    gen = prompts(args.seed)
    for _ in range(len(done)):
        next(gen)
    t0 = time.time()
    with work.open("a") as f:
        batch_no = len(done) // args.batch
        while total < args.tokens:
            ps = [next(gen) for _ in range(args.batch)]
            outs = generate(lm.model, lm.tokenizer, [chat_prompt(lm.tokenizer, p) for p in ps],
                            max_new_tokens=args.max_new_tokens, seed=args.seed * 7919 + batch_no,
                            batch_size=args.batch, repetition_penalty=1.1)
            batch_no += 1
            for p, o in zip(ps, outs):
                n = len(lm.tokenizer(o, add_special_tokens=False)["input_ids"])
                f.write(json.dumps({"text": o, "prompt": p, "n_tokens": n}) + "\n")
                total += n
            f.flush()
            print(f"{total} tokens, {total / max(time.time() - t0, 1e-9):.0f} tok/s this run", file=sys.stderr)
    tmp = Path(args.out + ".tmp")
    with work.open("rb") as src, gzip.open(tmp, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {total} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
