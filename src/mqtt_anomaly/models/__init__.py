"""Model lifecycle: the versioned model format (:mod:`.format`), the local registry
(:mod:`.registry`), training and evaluation (:mod:`.work`, :mod:`.data`) and the ``models``
commands (:mod:`.cli`). The lifecycle: docs/models.md.

This package imports nothing at module level: :mod:`.format` and :mod:`.registry` sit in the
io layer (the service starts from the registry's current model), the rest in the commands
layer.
"""
