"""Gated promotion: a new model version is scored on its model line's pinned held-out set and
becomes `@champion` only when it beats the current one."""
