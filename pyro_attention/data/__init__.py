"""Embedded data sets: files made by the scripts in ``scripts/`` and shipped with the package,
seeded seq2seq tasks with gold alignments generated on the fly (:mod:`.alignment_tasks`), and
seeded k-hop pointer chasing over sets of items (:mod:`.pointer_chasing`).
"""

from pyro_attention.data.alignment_tasks import (
    AlignmentBatch,
    AlignmentDataset,
    AlignmentTask,
    DatesTask,
    Example,
    Lexicon,
    ReverseTask,
    TranslationTask,
    Vocabulary,
    get_task,
    make_alignment_dataset,
    register_task,
    task_names,
)
from pyro_attention.data.digits import load_digits_binary
from pyro_attention.data.gmm import load_gmm2d
from pyro_attention.data.pointer_chasing import PointerChasing, make_pointer_chasing

__all__ = [
    "AlignmentBatch",
    "AlignmentDataset",
    "AlignmentTask",
    "DatesTask",
    "Example",
    "Lexicon",
    "PointerChasing",
    "ReverseTask",
    "TranslationTask",
    "Vocabulary",
    "get_task",
    "load_digits_binary",
    "load_gmm2d",
    "make_alignment_dataset",
    "make_pointer_chasing",
    "register_task",
    "task_names",
]
