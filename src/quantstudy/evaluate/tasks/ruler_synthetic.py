"""RULER's synthetic tasks beyond one needle: multi-key, multi-value and multi-query NIAH, and
variable tracking (NVIDIA/RULER, scripts/data/synthetic/niah.py and variable_tracking.py, the
configurations of scripts/synthetic.yaml, templates from synthetic/constants.py).

| task        | RULER config      | hidden in the haystack                         | asked for                  |
|-------------|-------------------|------------------------------------------------|----------------------------|
| `ruler_mk`  | niah_multikey_1   | 4 needles, 4 keys, one 7-digit number each     | one key's number           |
| `ruler_mv`  | niah_multivalue   | 4 needles, 1 key, 4 numbers                    | all 4 numbers              |
| `ruler_mq`  | niah_multiquery   | 4 needles, 4 keys, one number each             | all 4 keys' numbers        |
| `ruler_vt`  | vt                | one chain `VAR A = 12345`, `VAR B = VAR A` ... | every variable = the value |

Needles sit between sentences at depths drawn, as RULER does, from its 40 evenly spaced depths
(0-100%), one each, in the haystack's order; each item records them. The haystack is packaged WikiText (as
`ruler`), repeated when a length needs more than it holds, as RULER repeats its essays.
Scoring is RULER's `string_match_all`: the fraction of expected strings found (case-insensitive)
in the generation; an item is `correct` when all are. Items are seeded per task and seed, so
baseline and variants see identical prompts. `ruler` (niah_single) itself stays in `ruler.py`.
"""

from __future__ import annotations

import bisect
import random
import string
from dataclasses import dataclass

from quantstudy.data.windows import haystack_ids
from quantstudy.evaluate.tasks.ruler import DEFAULT_LENGTHS, NEEDLE, grid
from quantstudy.inference.requests import GenerateRequest
from quantstudy.items import ItemResult


@dataclass(frozen=True)
class Family:
    name: str
    version: str
    num_k: int = 1            # needle keys in the haystack (RULER's num_needle_k)
    num_v: int = 1            # values per key (num_needle_v)
    num_q: int = 1            # keys asked (num_needle_q)
    max_new_tokens: int = 64  # room for every expected string, separators and some slack
    margin: int = 224         # prompt beyond the haystack (template, question, chat wrapping) + answer


FAMILIES = {
    "ruler_mk": Family("ruler_mk", "niah_multikey_1-v1", num_k=4, max_new_tokens=32),
    "ruler_mv": Family("ruler_mv", "niah_multivalue-v1", num_v=4),
    "ruler_mq": Family("ruler_mq", "niah_multiquery-v1", num_k=4, num_q=4),
    # the one-shot example RULER puts before the question also sits in the margin
    "ruler_vt": Family("ruler_vt", "vt_1chain_4hops-v1", max_new_tokens=32, margin=480),
}
TASK_NAMES = tuple(FAMILIES)

# RULER's current niah template (constants.py); for one expected value niah.py turns the
# plurals singular ("Some" -> "A", "are" -> "is", "numbers" -> "number"), as _niah_text does.
NIAH_TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the numbers afterwards.\n{context}\n"
                 "What are all the special magic numbers for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic numbers for {query} mentioned in the provided text are"
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
             "are assigned the value {query}, they are: ")
VT_HOPS = 4
# RULER's "noise" haystack line, used by its one-shot variable-tracking example.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
EXAMPLE_NOISE_LINES = 6   # RULER's example fills ~500 tokens; this keeps the margin small
# RULER's 40 needle depths: np.round(np.linspace(0, 100, 40)) percent.
DEPTHS = tuple(round(100 * i / 39) / 100 for i in range(40))
# RULER draws keys as adjective-noun pairs from wonderwords' lists; that package is not a
# dependency, so these short lists give keys of the same form.
ADJECTIVES = ("amber", "quiet", "silver", "crimson", "hidden", "northern", "velvet", "iron", "golden", "broken",
              "lunar", "bitter", "gentle", "hollow", "rapid", "frozen", "wooden", "scarlet", "distant", "humble")
NOUNS = ("falcon", "harbor", "meadow", "lantern", "orchard", "comet", "tiger", "river", "sparrow", "thistle",
         "compass", "garden", "canyon", "violin", "glacier", "pebble", "kettle", "beacon", "willow", "anchor")


def _distinct(rng: random.Random, n: int, draw) -> list[str]:
    """n different draws: a repeated key or value would make the answer ambiguous."""
    out: list[str] = []
    while len(out) < n:
        x = draw(rng)
        if x not in out:
            out.append(x)
    return out


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _var(rng: random.Random, k: int = 5) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=k))


def _niah_text(fam: Family, query: str) -> tuple[str, str]:
    template, prefix = NIAH_TEMPLATE, NIAH_PREFIX
    if fam.num_q * fam.num_v == 1:
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        prefix = prefix.replace("are", "is")
        template, prefix = template.replace("numbers", "number"), prefix.replace("numbers", "number")
    return template.replace("{query}", query), prefix.format(query=query)


def _niah(fam: Family, rng: random.Random) -> dict:
    keys = _distinct(rng, fam.num_k, _key)
    numbers = _distinct(rng, fam.num_k * fam.num_v, _number)
    values = [numbers[i * fam.num_v:(i + 1) * fam.num_v] for i in range(fam.num_k)]
    needles = [NEEDLE.format(key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)                      # RULER shuffles them before placing them in depth order
    asked = rng.sample(range(fam.num_k), fam.num_q)
    queries = [keys[i] for i in asked]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix = _niah_text(fam, query)
    return {"needles": needles, "answers": [v for i in asked for v in values[i]], "query": query,
            "template": template, "answer_prefix": prefix, "keys": keys}


def _chain(rng: random.Random, k: int) -> tuple[list[str], list[str], str]:
    """One chain of VT_HOPS hops: the variables, the statements in order, the value."""
    names = _distinct(rng, VT_HOPS + 1, lambda r: _var(r, k))
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(VT_HOPS)]
    return names, statements, value


def _vt_example(rng: random.Random) -> str:
    """RULER's one-shot example: a short noise haystack with a chain of 3-letter variables,
    its question and its answer, put before the real question."""
    names, statements, value = _chain(rng, 3)
    lines = [NOISE] * EXAMPLE_NOISE_LINES
    for j, pos in enumerate(sorted(rng.sample(range(len(lines)), len(statements)))):
        lines.insert(pos + j, statements[j])   # as RULER's noise haystack: each in order
    question = VT_TEMPLATE.format(context="\n".join(lines), query=value)
    prefix = VT_PREFIX.format(num_v=VT_HOPS + 1, query=value)
    return question + prefix + " ".join(names) + "\n"


def _vt(rng: random.Random) -> dict:
    names, statements, value = _chain(rng, 5)
    example = _vt_example(rng)
    return {"needles": [s + "." for s in statements], "answers": names, "query": value,
            "template": example + VT_TEMPLATE.replace("{query}", value),
            "answer_prefix": VT_PREFIX.format(num_v=VT_HOPS + 1, query=value)}


def _sentence_ends(tokenizer, body: list[int]) -> list[int]:
    """Token positions just after a sentence ends: RULER inserts needles between sentences, and
    a needle cut into a number ("... 199 One of ... is: 3088056.8") would blur its value."""
    pieces = tokenizer.convert_ids_to_tokens(body)
    return [0] + [i + 1 for i, p in enumerate(pieces) if p.rstrip().endswith(".")] + [len(body)]


def _nearest(ends: list[int], target: float) -> int:
    i = bisect.bisect_left(ends, target)
    return min(ends[max(0, i - 1):i + 1], key=lambda e: abs(e - target))


def build_items(name: str, tokenizer, max_context: int, per_cell: int = 10, lengths=DEFAULT_LENGTHS,
                seed: int = 0) -> list[dict]:
    """`per_cell` items per length that fits the context (with the family's margin)."""
    fam = FAMILIES[name]
    lengths, _ = grid(max_context, lengths, (), margin=fam.margin)
    hay = haystack_ids(tokenizer)
    rng = random.Random(f"{name}:{seed}")    # its own stream per task: adding one changes no other
    items = []
    for length in lengths:
        for k in range(per_cell):
            spec = _vt(rng) if name == "ruler_vt" else _niah(fam, rng)
            needle_ids = [tokenizer(" " + n, add_special_tokens=False)["input_ids"] for n in spec["needles"]]
            n_body = max(0, length - sum(map(len, needle_ids)))
            start = rng.randrange(len(hay))
            body = (hay * (1 + (start + n_body) // len(hay)))[start:start + n_body]
            depths = sorted(rng.sample(DEPTHS, len(needle_ids)))
            ends = _sentence_ends(tokenizer, body)
            ids, last = [], 0
            for depth, needle in zip(depths, needle_ids):   # in depth order: a VT chain stays in order
                cut = max(last, _nearest(ends, depth * len(body)))
                ids += body[last:cut] + needle
                last = cut
            ids += body[last:]
            items.append({"id": f"{length}-{k}", "length": length, "k": k, "depths": depths,
                          "needles": spec["needles"], "answers": spec["answers"], "query": spec["query"],
                          "template": spec["template"], "answer_prefix": spec["answer_prefix"],
                          "context": tokenizer.decode(ids)})
    # Repetition-major order, so a --limit still spans every length.
    return sorted(items, key=lambda item: item["k"])


def prompt(item: dict) -> str:
    return item["template"].replace("{context}", item["context"])


def requests(name: str, items: list[dict], apply_chat=None) -> list[GenerateRequest]:
    out = []
    for item in items:
        # With a chat template the prefix starts the assistant's turn, as RULER (and `ruler`) do.
        prefix = item["answer_prefix"]
        text = apply_chat(prompt(item)) + prefix.strip() if apply_chat else prompt(item) + prefix
        out.append(GenerateRequest(text, FAMILIES[name].max_new_tokens, ("\n\n",)))
    return out


def string_match_all(answers: list[str], text: str) -> float:
    """RULER's string_match_all for one item: the fraction of answers in the text."""
    return sum(a.lower() in text.lower() for a in answers) / len(answers)


def score(name: str, items: list[dict], generations) -> list[ItemResult]:
    out = []
    for item, gen in zip(items, generations):
        s = string_match_all(item["answers"], gen.text)
        out.append(ItemResult(task=name, item_id=item["id"], prediction=gen.text.strip(), correct=s == 1.0,
                              score=s, tokens=gen.num_tokens,
                              extra={"length": item["length"], "depths": item["depths"]}))
    return out


def evaluate(name: str, engine, tokenizer, max_context: int, limit: int | None = None, apply_chat=None,
             seed: int = 0) -> list[ItemResult]:
    items = build_items(name, tokenizer, max_context, seed=seed)
    items = items[:limit] if limit is not None else items
    return score(name, items, engine.generate(requests(name, items, apply_chat=apply_chat)))
