"""Seeded seq2seq tasks with gold alignments: determinism, alignments correct by construction,
disjoint splits, vocabularies, batches and refusal of bad input."""

from __future__ import annotations

import datetime
import itertools
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from pyro_attention.data import (
    AlignmentDataset,
    AlignmentTask,
    DatesTask,
    Example,
    ReverseTask,
    TranslationTask,
    Vocabulary,
    alignment_tasks,
    get_task,
    make_alignment_dataset,
    register_task,
    task_names,
)

TASKS = ("dates", "reverse", "translation")
SIZES = {"num_train": 400, "num_valid": 60, "num_test": 60}


@pytest.fixture(scope="module")
def datasets() -> dict[str, AlignmentDataset]:
    return {name: make_alignment_dataset(name, **SIZES, seed=1) for name in TASKS}


def all_examples(data: AlignmentDataset) -> list[Example]:
    return data.train + data.valid + data.test


# --- registry and determinism ---------------------------------------------------------------


def test_registry_knows_the_three_tasks():
    assert set(TASKS) <= set(task_names())
    assert list(task_names()) == sorted(task_names())
    assert isinstance(get_task("dates"), DatesTask)
    assert isinstance(get_task("translation"), TranslationTask)
    task = get_task("reverse", alphabet_size=4, max_length=6)
    assert isinstance(task, ReverseTask) and task.alphabet == ("a", "b", "c", "d")


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_data_other_seed_other_data(name):
    a = make_alignment_dataset(name, num_train=200, num_valid=20, num_test=20, seed=5)
    b = make_alignment_dataset(name, num_train=200, num_valid=20, num_test=20, seed=5)
    c = make_alignment_dataset(name, num_train=200, num_valid=20, num_test=20, seed=6)
    assert a == b
    assert a.train != c.train and a.test != c.test


def test_pinned_first_examples():
    """The generators are plain ``random.Random`` streams: these are the same on every
    platform. (A deliberate change of a generator changes them; update them then.)"""
    first = {
        name: make_alignment_dataset(name, num_train=1, num_valid=1, num_test=1).train[0]
        for name in TASKS
    }
    assert first["dates"] == Example(
        ("friday", ",", "february", "15", "th", ",", "2019"),
        tuple("2019-02-15"),
        (6, 6, 6, 6, -1, 2, 2, -1, 3, 3),
    )
    assert first["reverse"].source == tuple("gaeihgehfjdicec")
    assert first["translation"] == Example(
        ("mon", "pamo", "raki", "vaker", "mon", "vegir", "tefos"),
        ("ne", "tepaishai", "jaibauyo", "mai", "ne", "sheyai", "judepai", "kaulena"),
        (0, 2, 1, 3, 4, 6, 5, 3),
    )


DIGEST = """
import hashlib
from pyro_attention.data import make_alignment_dataset
h = hashlib.sha256()
for name in ("dates", "reverse", "translation"):
    d = make_alignment_dataset(name, num_train=150, num_valid=20, num_test=20, seed=3)
    splits = (d.train, d.valid, d.test, d.source_vocab.tokens, d.target_vocab.tokens)
    h.update(repr(splits).encode())
print(h.hexdigest())
"""


def test_data_do_not_depend_on_the_string_hash_seed():
    """No set iteration order or ``hash()`` leaks into the data."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DIGEST],
            env={**os.environ, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    namespace: dict = {}
    here = DIGEST.replace("print(h.hexdigest())", "digest = h.hexdigest()")
    exec(here, namespace)
    assert outputs[0][0].strip() == outputs[1][0].strip() == namespace["digest"]


# --- splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_splits_have_their_sizes_and_are_disjoint(datasets, name):
    data = datasets[name]
    assert data.task == name
    sizes = [len(data.train), len(data.valid), len(data.test)]
    assert sizes == [SIZES["num_train"], SIZES["num_valid"], SIZES["num_test"]]
    pairs = [
        {(ex.source, ex.target) for ex in split} for split in (data.train, data.valid, data.test)
    ]
    assert sum(map(len, pairs)) == sum(sizes)  # no repeats at all, hence none across splits
    for a, b in itertools.combinations(pairs, 2):
        assert not a & b


def test_splits_are_disjoint_when_the_task_repeats_itself():
    """Only 2**3 + 2**4 = 24 distinct examples: most draws are repeats and are skipped."""
    task = ReverseTask(alphabet_size=2, min_length=3, max_length=4)
    data = make_alignment_dataset(task, num_train=14, num_valid=5, num_test=5)
    pairs = [(ex.source, ex.target) for ex in all_examples(data)]
    assert len(set(pairs)) == len(pairs) == 24
    with pytest.raises(ValueError, match="only 24 distinct examples"):
        make_alignment_dataset(task, num_train=20, num_valid=5, num_test=5)


@pytest.mark.parametrize("name", TASKS)
def test_every_source_determines_its_target(datasets, name):
    """No task is ambiguous (e.g. 05/06 read as day/month in one form, month/day in another)."""
    targets: dict[tuple[str, ...], tuple[str, ...]] = {}
    for ex in all_examples(datasets[name]):
        assert targets.setdefault(ex.source, ex.target) == ex.target, ex


# --- reverse --------------------------------------------------------------------------------


def test_reverse_alignment_points_to_the_copied_token(datasets):
    lengths = set()
    for ex in all_examples(datasets["reverse"]):
        S = len(ex.source)
        lengths.add(S)
        assert len(ex.target) == S
        for j, a in enumerate(ex.alignment):
            assert a == S - 1 - j
            assert ex.target[j] == ex.source[a]
    assert min(lengths) == 3 and max(lengths) == 20


# --- dates ----------------------------------------------------------------------------------

MONTHS = (
    "january february march april may june july august september october november december"
).split()
ROMAN = "i ii iii iv v vi vii viii ix x xi xii".split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
ORDINAL_UNITS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()


def cardinal(word: str) -> int | None:
    if word in UNITS:
        return UNITS.index(word)
    tens, _, unit = word.partition("-")
    if tens in TENS and (not unit or unit in UNITS[1:10]):
        return TENS[tens] + (UNITS.index(unit) if unit else 0)
    return None


def ordinal(word: str) -> int | None:
    if word in ORDINAL_UNITS:
        return ORDINAL_UNITS.index(word) + 1
    if word in ("twentieth", "thirtieth"):
        return {"twentieth": 20, "thirtieth": 30}[word]
    tens, _, unit = word.partition("-")
    if tens in TENS and unit in ORDINAL_UNITS[:9]:
        return TENS[tens] + ORDINAL_UNITS.index(unit) + 1
    return None


def spelled_year(tokens: tuple[str, ...]) -> int | None:
    """``nineteen fifty``, ``nineteen oh five``, ``nineteen hundred``, ``two thousand
    twenty-six``, ``twenty twenty-six`` (the year runs to the end of the number words)."""
    words = list(
        itertools.takewhile(
            lambda t: cardinal(t) is not None or t in ("thousand", "hundred", "oh"), tokens
        )
    )
    if len(words) < 2 or cardinal(words[0]) is None:
        return None
    head = cardinal(words[0])
    if words[1] == "thousand":
        return 1000 * head + (cardinal(words[2]) if len(words) > 2 else 0)
    if words[1] == "hundred":
        return 100 * head
    if words[1] == "oh":
        return 100 * head + cardinal(words[2])
    return 100 * head + cardinal(words[1])


def encodes_year(source: tuple[str, ...], i: int, year: int) -> bool:
    token = source[i]
    if token.isdigit():
        return (len(token) == 4 and int(token) == year) or (
            len(token) == 2 and int(token) == year % 100
        )
    return spelled_year(source[i:]) == year


def encodes_month(token: str, month: int) -> bool:
    if token.isdigit():
        return int(token) == month
    return token in (MONTHS[month - 1], MONTHS[month - 1][:3], ROMAN[month - 1])


def encodes_day(token: str, day: int) -> bool:
    return int(token) == day if token.isdigit() else ordinal(token) == day


def test_dates_alignments_point_to_the_tokens_that_carry_the_fields(datasets):
    weekdays_seen = 0
    for ex in all_examples(datasets["dates"]):
        iso = "".join(ex.target)
        date = datetime.date.fromisoformat(iso)
        assert iso == date.isoformat() and 1950 <= date.year <= 2049
        a = ex.alignment
        assert a[4] == a[7] == -1
        assert len(set(a[0:4])) == len(set(a[5:7])) == len(set(a[8:10])) == 1
        assert encodes_year(ex.source, a[0], date.year), ex
        assert encodes_month(ex.source[a[5]], date.month), ex
        assert encodes_day(ex.source[a[8]], date.day), ex
        for token in ex.source:
            assert token == token.lower()
            for names in (WEEKDAYS, [w[:3] for w in WEEKDAYS]):
                if token in names:
                    weekdays_seen += 1
                    assert names.index(token) == date.weekday(), ex
    assert weekdays_seen > 20


def shape(token: str) -> str:
    if token.isdigit():
        return "9" * len(token)
    for label, names in [
        ("MONTH", MONTHS),
        ("MON", [m[:3] for m in MONTHS]),
        ("ROMAN", ROMAN),
        ("WEEKDAY", WEEKDAYS),
        ("WKD", [w[:3] for w in WEEKDAYS]),
    ]:
        if token in names:
            return label
    if cardinal(token) is not None or ordinal(token) is not None:
        return "WORD"
    return token


def test_dates_come_in_many_surface_forms(datasets):
    shapes = Counter(tuple(map(shape, ex.source)) for ex in datasets["dates"].train)
    assert len(shapes) >= 20, shapes
    lengths = [len(ex.source) for ex in datasets["dates"].train]
    assert min(lengths) == 3 and max(lengths) >= 8


def test_dates_render_every_format_with_matching_tokens():
    task = DatesTask()
    rng = random.Random(0)
    cases = set()
    for format_name in task.FORMATS:
        for _ in range(12):
            date = datetime.date.fromordinal(rng.randint(712_000, 748_000))
            text, ex = task.render(date, format_name, rng)
            assert ex.source == task.tokenize(text) == DatesTask().tokenize(text.lower())
            assert "".join(ex.target) == date.isoformat()
            cases.add("upper" if text.isupper() else "lower" if text.islower() else "other")
    assert cases == {"upper", "lower", "other"}
    d = datetime.date(2026, 11, 21)
    spelled = {task.render(d, "spelled", random.Random(s))[0].lower() for s in range(20)}
    assert spelled == {
        "the twenty-first of november, two thousand twenty-six",
        "the twenty-first of november, twenty twenty-six",
    }
    assert task.render(d, "weekday_day_month_year", rng)[0].lower() == "saturday, 21 november 2026"
    assert task.render(d, "roman", rng)[0].lower() == "21.xi.2026"
    assert task.render(d, "us_short", rng)[0] == "11/21/26"
    assert task.render(datetime.date(1905, 3, 2), "spelled", rng)[0].lower() == (
        "the second of march, nineteen oh five"
    )


def test_dates_surface_forms_are_unambiguous():
    """Dates whose day, month and two-digit year could be mistaken for one another, in every
    form: no surface text may stand for two dates."""
    task = DatesTask()
    rng = random.Random(0)
    dates = {}
    for year, month, day in itertools.product((1950, 2001, 2005, 2012), range(1, 13), range(1, 14)):
        date = datetime.date(year, month, day)
        for format_name in task.FORMATS:
            for _ in range(3):
                source = task.render(date, format_name, rng)[1].source
                assert dates.setdefault(source, date) == date, (source, format_name)
    assert len(dates) > 4 * 12 * 13 * len(task.FORMATS)


def test_dates_options():
    task = DatesTask(min_year=2000, max_year=2000, formats=["iso"], lowercase=False)
    data = make_alignment_dataset(task, num_train=50, num_valid=5, num_test=5)
    assert data.task == "dates"
    for ex in all_examples(data):
        assert ex.source[0] == "2000" and ex.source[1] == "-"
    rng = random.Random(0)
    texts = {
        DatesTask(lowercase=False).render(datetime.date(2026, 11, 21), "roman", rng)[1].source
        for _ in range(20)
    }
    assert ("21", ".", "XI", ".", "2026") in texts and ("21", ".", "xi", ".", "2026") in texts


# --- translation ----------------------------------------------------------------------------


def test_translation_aligned_tokens_are_translations_of_their_source(datasets):
    lex = TranslationTask().lexicon
    for ex in all_examples(datasets["translation"]):
        assert -1 not in ex.alignment
        for token, a in zip(ex.target, ex.alignment, strict=True):
            assert token in lex.translations(ex.source[a]), (token, ex)
        # Only the definite determiner and the modifier of an idiom translate to nothing.
        for i in set(range(len(ex.source))) - set(ex.alignment):
            assert ex.source[i] == lex.definite or tuple(ex.source[i : i + 2]) in lex.idioms, ex
        assert ex.target[-1] == lex.verbs[ex.source[ex.alignment[-1]]][1]  # verb-final stem
        assert 3 <= len(ex.source) <= 17


def reference_translation(lex, source: tuple[str, ...], verb_final: bool = True):
    """Translate ``source`` by parsing it (not by replaying the generator): target, alignment."""

    def noun_phrase(i: int) -> tuple[list[tuple[str, int]], int]:
        det, i = i, i + 1
        adjectives = []
        while lex.category(source[i]) == "adjective":
            adjectives.append(i)
            i += 1
        if tuple(source[i : i + 2]) in lex.idioms:
            forms, head, i = lex.idioms[source[i], source[i + 1]], i + 1, i + 2
        else:
            forms, head, i = lex.nouns[source[i]], i, i + 1
        if source[det] == lex.definite:
            phrase = [(forms[1], head)]
        else:
            phrase = [(lex.determiners[source[det]], det), (forms[0], head)]
        return phrase + [(lex.adjectives[source[a]], a) for a in adjectives], i

    subject, verb = noun_phrase(0)
    aux, stem = lex.verbs[source[verb]]
    rest, i = [], verb + 1
    if i < len(source) and lex.category(source[i]) == "determiner":
        rest, i = noun_phrase(i)
    if i < len(source):
        phrase, end = noun_phrase(i + 1)
        rest += [(lex.prepositions[source[i]], i), *phrase]
        assert end == len(source)
    if verb_final:
        pairs = [*subject, (aux, verb), *rest, (stem, verb)]
    else:
        pairs = [*subject, (aux, verb), (stem, verb), *rest]
    return tuple(t for t, _ in pairs), tuple(a for _, a in pairs)


@pytest.mark.parametrize("verb_final", [True, False])
def test_translation_agrees_with_a_reference_translator(datasets, verb_final):
    task = TranslationTask(verb_final=verb_final)
    if verb_final:
        examples = all_examples(datasets["translation"])
    else:
        rng = random.Random(0)
        examples = [task.sample(rng) for _ in range(300)]
    for ex in examples:
        assert reference_translation(task.lexicon, ex.source, verb_final) == (
            ex.target,
            ex.alignment,
        ), ex
    # The example of the TranslationTask docstring.
    source = tuple("fen tobin dinil fen finul teras tobin sadil du depoken".split())
    assert reference_translation(TranslationTask().lexicon, source) == (
        tuple("raporum mai demotaum pupai mobau ra tajishu yobai".split()),
        (1, 2, 6, 4, 7, 8, 9, 2),
    )


def test_translation_has_swaps_one_to_many_and_many_to_one(datasets):
    lex = TranslationTask().lexicon
    found = Counter()
    for ex in all_examples(datasets["translation"]):
        src, a = ex.source, ex.alignment
        for j1, j2 in itertools.combinations(range(len(a)), 2):
            if (
                a[j1] > a[j2]
                and lex.category(src[a[j1]]) == "noun"
                and lex.category(src[a[j2]]) == "adjective"
            ):
                found["adjective-noun swap"] += 1
        for i, count in Counter(a).items():
            if count > 1:
                assert lex.category(src[i]) == "verb" and count == 2
                assert (
                    tuple(t for t, b in zip(ex.target, a, strict=True) if b == i)
                    == (lex.verbs[src[i]])
                )
                found["one-to-many"] += 1
        for token, i in zip(ex.target, a, strict=True):
            if src[i] in lex.nouns and token == lex.nouns[src[i]][1]:
                determiners = [k for k in range(i) if lex.category(src[k]) == "determiner"]
                assert src[determiners[-1]] == lex.definite, ex
                found["determiner+noun"] += 1
            if i > 0 and (src[i - 1], src[i]) in lex.idioms:
                assert token in lex.idioms[src[i - 1], src[i]]
                found["idiom"] += 1
    assert {k: v > 10 for k, v in found.items()} == dict.fromkeys(
        ["adjective-noun swap", "one-to-many", "determiner+noun", "idiom"], True
    ), found


def test_translation_lexicon_is_seeded_and_words_order_optional():
    a, b = TranslationTask(seed=0).lexicon, TranslationTask(seed=1).lexicon
    assert a == TranslationTask(seed=0).lexicon and a != b
    assert len(a.nouns) == 20 and len(a.verbs) == 10 and len(a.idioms) == 4
    assert a.category(a.definite) == "determiner" and a.category("<pad>") is None
    rng = random.Random(0)
    task = TranslationTask(verb_final=False, object_probability=1.0, pp_probability=0.0)
    for _ in range(50):
        ex = task.sample(rng)
        verb = next(i for i, w in enumerate(ex.source) if task.lexicon.category(w) == "verb")
        j = ex.alignment.index(verb)
        assert ex.alignment[j + 1] == verb and ex.alignment[-1] != verb


# --- vocabulary -----------------------------------------------------------------------------


def test_vocabulary_specials_round_trip_and_unknown(datasets):
    data = datasets["translation"]
    for vocab in (data.source_vocab, data.target_vocab):
        assert vocab.pad_id == 0 and vocab.tokens[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")
        assert len(vocab) == len(set(vocab.tokens))
    for ex in data.train:
        ids = data.source_vocab.encode(ex.source)
        assert data.source_vocab.unk_id not in ids
        assert tuple(data.source_vocab.decode(ids)) == ex.source
        ids = data.target_vocab.encode(ex.target, add_bos=True, add_eos=True)
        assert ids[0] == data.target_vocab.bos_id and ids[-1] == data.target_vocab.eos_id
        assert tuple(data.target_vocab.decode(torch.tensor(ids), skip_special=True)) == ex.target
    vocab = Vocabulary.from_sequences([["b", "a"], ["c", "a"]])
    assert vocab.tokens[4:] == ("a", "b", "c") and "a" in vocab and "z" not in vocab
    assert vocab.encode(["a", "zzz"]) == [4, vocab.unk_id]
    assert vocab.decode([4, 3]) == ["a", "<unk>"]


def test_vocabularies_come_from_the_training_split():
    data = make_alignment_dataset(
        ReverseTask(alphabet_size=300, min_length=3, max_length=4),
        num_train=20,
        num_valid=20,
        num_test=20,
    )
    train_tokens = {t for ex in data.train for t in ex.source}
    assert set(data.source_vocab.tokens[4:]) == train_tokens
    unseen = [t for ex in data.test for t in ex.source if t not in train_tokens]
    assert unseen, "the test split should contain tokens the training split lacks"
    batch = data.tensors("test")
    assert (batch.source == data.source_vocab.unk_id).sum() == len(unseen)


# --- batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_batches_shapes_masks_alignment_and_device(datasets, name, device):
    data = datasets[name]
    batches = list(data.batches("valid", 16, device=device))
    assert [len(b.index) for b in batches] == [16, 16, 16, 12]
    for batch in batches:
        B, S = batch.source.shape
        T = batch.target.shape[1]
        examples = [data.valid[i] for i in batch.index.tolist()]
        assert S == max(len(ex.source) for ex in examples)
        assert T == max(len(ex.target) for ex in examples)
        for t in batch:
            assert t.device.type == device.type and t.shape[0] == B
        for t in (batch.source, batch.target, batch.target_in, batch.alignment, batch.index):
            assert t.dtype == torch.long
        assert batch.target_in.shape == batch.target_mask.shape == batch.alignment.shape == (B, T)
        assert torch.equal(batch.source_mask, batch.source != data.source_vocab.pad_id)
        assert torch.equal(batch.target_mask, batch.target != data.target_vocab.pad_id)
        assert (batch.alignment[~batch.target_mask] == -1).all()
        lengths = batch.source_mask.sum(-1, keepdim=True).expand(B, T)
        aligned = batch.alignment >= 0
        assert (batch.alignment[aligned] < lengths[aligned]).all()
        assert (batch.target_in[:, 0] == data.target_vocab.bos_id).all()
        shifted = batch.target_mask[:, 1:]
        assert torch.equal(batch.target_in[:, 1:][shifted], batch.target[:, :-1][shifted])
        assert (batch.target_in[~batch.target_mask] == data.target_vocab.pad_id).all()
        for row, ex in enumerate(examples):
            source = data.source_vocab.decode(batch.source[row], skip_special=True)
            assert len(source) == len(ex.source)
            assert batch.alignment[row, : len(ex.alignment)].tolist() == list(ex.alignment)


def test_shuffle_is_deterministic_given_the_seed(datasets, device):
    data = datasets["reverse"]

    def order(**kwargs):
        return torch.cat([b.index for b in data.batches("train", 64, device=device, **kwargs)])

    plain = order()
    assert torch.equal(plain.cpu(), torch.arange(len(data.train)))
    a, b, c = order(shuffle=True, seed=3), order(shuffle=True, seed=3), order(shuffle=True, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert torch.equal(a.sort().values, plain)


def test_tensors_is_the_whole_split_as_one_batch(datasets, device):
    data = datasets["dates"]
    whole = data.tensors("test", device=device)
    (only,) = data.batches("test", len(data.test), device=device)
    for x, y in zip(whole, only, strict=True):
        assert torch.equal(x, y) and x.device.type == device.type
    assert whole.target.shape == (len(data.test), 10)


# --- extension and bad input ----------------------------------------------------------------


def test_a_new_task_is_one_small_class(monkeypatch):
    monkeypatch.setattr(alignment_tasks, "_TASKS", dict(alignment_tasks._TASKS))

    @register_task
    @dataclass(frozen=True, kw_only=True)
    class CopyTask(AlignmentTask):
        name: ClassVar[str] = "copy"
        length: int = 6

        def sample(self, rng: random.Random) -> Example:
            source = tuple(rng.choice("abcd") for _ in range(self.length))
            return Example(source, source, tuple(range(self.length)))

    assert "copy" in task_names()
    data = make_alignment_dataset("copy", num_train=30, num_valid=5, num_test=5)
    assert data.task == "copy" and all(ex.source == ex.target for ex in data.train)
    assert get_task("copy", length=3).sample(random.Random(0)).alignment == (0, 1, 2)
    with pytest.raises(TypeError, match="options are: length"):
        get_task("copy", lenght=3)

    class Other(CopyTask):
        pass

    with pytest.raises(ValueError, match="'copy' is already registered"):
        register_task(Other)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: make_alignment_dataset("nope"), ValueError, "known tasks: .*dates.*reverse"),
        (lambda: get_task("nope"), ValueError, "unknown task 'nope'"),
        (lambda: make_alignment_dataset("reverse", num_train=0), ValueError, "num_train"),
        (lambda: make_alignment_dataset("reverse", num_valid=-1), ValueError, "num_valid"),
        (lambda: make_alignment_dataset("reverse", num_test=1.5), TypeError, "num_test"),
        (lambda: make_alignment_dataset(3), TypeError, "task must be a task name"),
        (
            lambda: make_alignment_dataset(ReverseTask(alphabet_size=1, max_length=3)),
            ValueError,
            "only 1 distinct examples",
        ),
        (lambda: get_task("reverse", size=3), TypeError, "options are: alphabet_size"),
        (lambda: ReverseTask(min_length=5, max_length=4), ValueError, "max_length"),
        (lambda: ReverseTask(alphabet_size=0), ValueError, "alphabet_size"),
        (lambda: DatesTask(formats=["iso", "nope"]), ValueError, r"unknown \['nope'\]"),
        (lambda: DatesTask(min_year=1900, max_year=2049), ValueError, "two-digit"),
        (lambda: DatesTask(min_year=999), ValueError, "min_year"),
        (lambda: TranslationTask(max_adjectives=11), ValueError, "max_adjectives"),
        (lambda: TranslationTask(pp_probability=1.5), ValueError, "pp_probability"),
        (lambda: Example(("a",), ("b",), (1,)), ValueError, r"alignment\[0\] = 1"),
        (lambda: Example(("a",), ("b", "c"), (0,)), ValueError, "one source position"),
        (lambda: Example((), ("b",), (0,)), ValueError, "source is empty"),
        (lambda: Example("ab", ("b",), (0,)), TypeError, "source must be a tuple"),
        (lambda: Vocabulary(["a", "<unk>"]), ValueError, "special token"),
        (lambda: Vocabulary(["a"]).decode([9]), ValueError, "outside the vocabulary"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_batch_arguments_are_refused_before_iterating(datasets):
    data = datasets["reverse"]
    with pytest.raises(ValueError, match="batch_size"):
        data.batches("train", 0)
    with pytest.raises(ValueError, match=r"unknown split 'training'.*train, valid, test"):
        data.batches("training", 8)
    with pytest.raises(ValueError, match="unknown split"):
        data.tensors("dev")


def test_example_accepts_lists_and_is_hashable():
    ex = Example(["a", "b"], ["b", "a", "-"], [1, 0, -1])
    assert ex.source == ("a", "b") and ex.alignment == (1, 0, -1)
    assert len({ex, Example(("a", "b"), ("b", "a", "-"), (1, 0, -1))}) == 1
