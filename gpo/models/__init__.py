"""Models and scoring: loading (the embedded SmolLM2, the tiny test model), LoRA, sampling,
sequence log-probs over completion tokens, the reference policy and its on-disk log-prob cache.

Sits below both training and evaluation (they score with it); imports only ``gpo.data``,
``gpo.losses`` and the shared helpers. Submodules are imported where used (torch and
transformers load lazily).
"""
