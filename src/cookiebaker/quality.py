"""What a user judges: measures of the replies themselves. Two kinds, in one registry (:data:`MEASURES`) that the
JSON report, the Markdown report, the CLI table and the demo printout all loop over:

- is a reply broken? echoes, loops, empty replies, stops, template leaks, diversity, length;
- is it a twin of the chat? whether the chat's own replies can be told from it (``style_auc``), whether the model
  knows which message a reply answers (``context_hit``) and whether its replies fit their message (``judge_hit``),
  how generic it is (``top5_share``, ``unique_rate``) and how far its lengths are from the chat's (``length_w1``).

The text measures are exact on plain text: the tests give hand-made replies and expected values. The scored ones
(``loss``, ``context_hit``, ``judge_hit``) need a model's log-likelihoods; eval computes them, and
:func:`one_in_k_hit_rate` turns them into a rate.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

#: A reply whose normalised text is at least this similar to the query's is an echo.
ECHO_SIMILARITY = 0.8
#: One side contained in the other is an echo when the contained side has at least this many words.
ECHO_MIN_CONTAINED_WORDS = 2
#: Chat-template markup that must never reach a reply (Gemma, ChatML/SmolLM2, Llama 3, generic).
TEMPLATE_MARKERS = re.compile(r"<start_of_turn>|<end_of_turn>|<eos>|<bos>|<\|[a-z_]+\|>|</s>|\[/?INST\]")

_WORD = re.compile(r"\w+", re.UNICODE)
# A unit of 4-40 characters repeated at least 4 times in a row ("very very very very …", "abcabcabcabc").
_REPEATED_UNIT = re.compile(r"(.{4,40}?)\1{3,}", re.S)


def words(text: str) -> list[str]:
    """Case-folded words (letters, digits, underscore runs in any script); punctuation and spacing vanish."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def similarity(a: str, b: str) -> float:
    """Similarity of two texts' normalised word sequences (difflib ratio on the joined words), in [0, 1]."""
    left, right = " ".join(words(a)), " ".join(words(b))
    if not left and not right:
        return 1.0
    return SequenceMatcher(None, left, right, autojunk=False).ratio()


def _contains_run(longer: list[str], shorter: list[str]) -> bool:
    width = len(shorter)
    return any(longer[i:i + width] == shorter for i in range(len(longer) - width + 1))


def is_echo(query: str, reply: str, threshold: float = ECHO_SIMILARITY) -> bool:
    """The reply is the query or nearly so: normalised similarity ≥ ``threshold``, or one contains the other
    as a run of whole words (the contained side at least two words). An empty side is never an echo."""
    q, r = words(query), words(reply)
    if not q or not r:
        return False
    if similarity(query, reply) >= threshold:
        return True
    shorter, longer = (q, r) if len(q) <= len(r) else (r, q)
    return len(shorter) >= ECHO_MIN_CONTAINED_WORDS and _contains_run(longer, shorter)


def is_loop(reply: str) -> bool:
    """Degenerate repetition: one word four or more times in a row, a 4-40 character unit (of at least three
    different characters) repeated four or more times in a row, or, in replies of 12+ words, fewer than half
    of the word 3-grams distinct."""
    tokens = words(reply)
    run = 1
    for previous, current in zip(tokens, tokens[1:]):
        run = run + 1 if current == previous else 1
        if run >= 4:
            return True
    for match in _REPEATED_UNIT.finditer(reply):
        if len(set(match.group(1))) >= 3:
            return True
    if len(tokens) >= 12:
        grams = list(zip(tokens, tokens[1:], tokens[2:]))
        if len(set(grams)) / len(grams) < 0.5:
            return True
    return False


def is_empty(reply: str) -> bool:
    return not reply.strip()


def has_template_leak(reply: str) -> bool:
    return TEMPLATE_MARKERS.search(reply) is not None


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all texts divided by all word n-grams (None when there is none)."""
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, texts) for i in range(len(tokens) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


def mean_words(texts: Sequence[str]) -> float | None:
    return round(sum(len(words(t)) for t in texts) / len(texts), 3) if texts else None


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def normalised(text: str) -> str:
    """A reply as its case-folded words: "Deal!" and "deal" are the same reply."""
    return " ".join(words(text))


def top5_share(texts: Sequence[str]) -> float | None:
    """Share of the replies that are one of the set's five most frequent (normalised) replies: high for a model
    that says the same few things to everyone."""
    if not texts:
        return None
    counts = Counter(normalised(t) for t in texts)
    return round(sum(n for _, n in counts.most_common(5)) / len(texts), 4)


def unique_rate(texts: Sequence[str]) -> float | None:
    """Share of the replies whose normalised text occurs once in the set."""
    if not texts:
        return None
    counts = Counter(normalised(t) for t in texts)
    return round(sum(counts[normalised(t)] == 1 for t in texts) / len(texts), 4)


def length_w1(texts: Sequence[str], reference: Sequence[str]) -> float | None:
    """Wasserstein-1 distance between the word counts of the replies and of the reference (real) replies: how many
    words, on average, the length distribution must move to become the chat's."""
    if not texts or not reference:
        return None
    from scipy.stats import wasserstein_distance

    return round(float(wasserstein_distance([len(words(t)) for t in texts], [len(words(t)) for t in reference])), 4)


#: The classifier two-sample test: folds of the cross-validation and seeds it is averaged over.
STYLE_FOLDS, STYLE_SEEDS = 5, 5


def style_auc(texts: Sequence[str], reference: Sequence[str], folds: int = STYLE_FOLDS,
              seeds: int = STYLE_SEEDS) -> float | None:
    """How well a classifier tells the replies from the reference (real) replies: character 1-4-gram TF-IDF (within
    word boundaries, case kept, sublinear term frequencies) and logistic regression; the ROC AUC of its out-of-fold
    probabilities in stratified ``folds``-fold cross-validation, averaged over ``seeds`` shuffles. 0.5: the replies
    cannot be told from the chat's; 1.0: every one can. None with fewer than ``folds`` of either."""
    if min(len(texts), len(reference)) < folds:
        return None
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    samples = [t if t.strip() else "\u2205" for t in [*texts, *reference]]  # an empty reply is a reply too
    labels = [1] * len(texts) + [0] * len(reference)
    aucs = []
    for seed in range(seeds):
        classifier = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False, sublinear_tf=True),
            LogisticRegression(max_iter=1000))
        folds_of = StratifiedKFold(folds, shuffle=True, random_state=seed)
        probabilities = cross_val_predict(classifier, samples, labels, cv=folds_of, method="predict_proba")[:, 1]
        aucs.append(roc_auc_score(labels, probabilities))
    return round(sum(aucs) / len(aucs), 4)


#: The 1-of-k tests score each sample's reply after its own prompt and after this many others.
OTHER_PROMPTS = 7


def candidate_prompts(queries: Sequence[str], others: int = OTHER_PROMPTS, seed: int = 0) -> list[list[int]]:
    """For each sample, its own index and ``others`` other samples' indices (fixed seed), never one whose query has
    the same text: the prompts its reply is scored after."""
    rng = random.Random(seed)
    candidates = []
    for index, query in enumerate(queries):
        pool = [j for j, other in enumerate(queries) if j != index and normalised(other) != normalised(query)]
        candidates.append([index, *rng.sample(pool, min(others, len(pool)))])
    return candidates


def one_in_k_hit_rate(scores: Sequence[Sequence[float]]) -> float | None:
    """Per sample, a row of log-likelihoods whose first is the reply after its own prompt: the share of samples
    where the own prompt wins (a tie of t best shares the hit, 1/t). Chance is 1/k for rows of k."""
    credits = []
    for row in scores:
        if len(row) < 2:
            continue
        best = max(row)
        credits.append(1 / sum(value == best for value in row) if row[0] == best else 0.0)
    return round(sum(credits) / len(credits), 4) if credits else None


@dataclass(frozen=True)
class Reply:
    """A generated reply and why generation ended: ``stop`` (the end-of-turn token or a stop string) or
    ``length`` (the token limit)."""

    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class ReplySet:
    """What the text measures read: the queries, one set of replies to them (``finish_reasons`` None for the real
    replies), and the real replies, the yardstick."""

    queries: Sequence[str]
    texts: Sequence[str]
    real: Sequence[str]
    finish_reasons: Sequence[str | None] | None = None
    echo_threshold: float = ECHO_SIMILARITY

    @property
    def is_real(self) -> bool:
        return self.finish_reasons is None


@dataclass(frozen=True)
class Measure:
    """One measure: its report key, the row title the printouts use, how a value is formatted, and how it is
    computed (None: from a model's log-likelihoods, in eval)."""

    name: str
    title: str
    fmt: str
    meaning: str
    compute: Callable[[ReplySet], float | None] | None = None
    of_real: bool = True
    """Whether it is measured on the real replies too."""

    def format(self, value: float | None) -> str:
        return "–" if value is None else format(value, self.fmt)


def _stop_rate(r: ReplySet) -> float | None:
    return _rate([reason == "stop" for reason in r.finish_reasons or []])


MEASURES: tuple[Measure, ...] = (
    Measure("loss", "loss on the real replies", ".2f", "response-only loss on every held-out sample: lower is "
            "closer to the chat's wording"),
    Measure("context_hit", "knows which message a reply answers", ".2f", "the model's log-likelihood of the real "
            "reply is highest after its own message of 8 (7 others): a twin well above chance (0.125)",
            of_real=False),
    Measure("judge_hit", "replies fit their message (judge)", ".2f", "the same 1-of-8 test on the replies, scored by "
            "the frozen base: near the real replies' value; far above means restating the query, near 0.125 "
            "off-topic"),
    Measure("style_auc", "told apart from the chat (AUC)", ".2f", "a character n-gram classifier telling the replies "
            "from the real ones: 0.5 means indistinguishable", lambda r: style_auc(r.texts, r.real), of_real=False),
    Measure("echo_rate", "echoes the query", ".2f", "the reply is the query or nearly so",
            lambda r: _rate([is_echo(q, t, r.echo_threshold) for q, t in zip(r.queries, r.texts)])),
    Measure("loop_rate", "loops", ".2f", "degenerate repetition", lambda r: _rate([is_loop(t) for t in r.texts])),
    Measure("empty_rate", "empty", ".2f", "nothing but white space", lambda r: _rate([is_empty(t) for t in r.texts]),
            of_real=False),
    Measure("stop_rate", "stops by itself", ".2f", "generation ended on the end-of-turn token or a stop",
            _stop_rate, of_real=False),
    Measure("template_leak_rate", "template markup in the text", ".2f", "chat-template markup in the reply",
            lambda r: _rate([has_template_leak(t) for t in r.texts]), of_real=False),
    Measure("top5_share", "its 5 commonest replies' share", ".2f", "high for a generic machine; near the real "
            "replies' value for a twin", lambda r: top5_share(r.texts)),
    Measure("unique_rate", "replies said once", ".2f", "share of replies that occur once",
            lambda r: unique_rate(r.texts)),
    Measure("length_w1", "length gap to the chat (words)", ".2f", "Wasserstein-1 distance of the word counts from "
            "the real replies': 0 is the chat's lengths", lambda r: length_w1(r.texts, r.real), of_real=False),
    Measure("distinct_2", "distinct bigrams", ".2f", "distinct word bigrams over all replies",
            lambda r: distinct_n(r.texts, 2)),
    Measure("mean_reply_words", "words per reply", ".1f", "mean words per reply", lambda r: mean_words(r.texts)),
)
MEASURE_NAMES = tuple(m.name for m in MEASURES)


def measure_texts(replies: ReplySet) -> dict[str, float | None]:
    """Every text measure of one set of replies (those that apply to real replies, for the real ones)."""
    return {m.name: m.compute(replies) for m in MEASURES
            if m.compute is not None and (m.of_real or not replies.is_real)}


def measure_rows(sets: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """The measures as table rows: (title, one formatted cell per set), in the registry's order; a measure no set
    has is left out."""
    return [(measure.title, [measure.format(values.get(measure.name)) for values in sets.values()])
            for measure in MEASURES if any(measure.name in values for values in sets.values())]


def measure_table(sets: dict[str, dict], indent: str = "  ", width: int = 38) -> list[str]:
    """The measures as plain-text lines: a header with the sets' names, then one row per measure."""
    lines = [f"{indent}{'':{width}}" + "".join(f"{name:>8}" for name in sets)]
    lines += [f"{indent}{title:{width}}" + "".join(f"{cell:>8}" for cell in cells)
              for title, cells in measure_rows(sets)]
    return lines
