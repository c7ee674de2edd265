"""Document quality filters: each a small class answering "keep, or drop with this reason"."""

from lmforge.tasks.filters.base import DocumentFilter, first_rejection
from lmforge.tasks.filters.c4 import C4QualityFilter
from lmforge.tasks.filters.fineweb import FineWebQualityFilter
from lmforge.tasks.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from lmforge.tasks.filters.pii import PIIFormatter
from lmforge.tasks.filters.url import URLFilter

__all__ = [
    "C4QualityFilter",
    "DocumentFilter",
    "FineWebQualityFilter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "PIIFormatter",
    "URLFilter",
    "first_rejection",
]
