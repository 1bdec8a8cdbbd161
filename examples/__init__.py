"""Example "user models": what a user's own PyTorch code looks like to modelzip.

``custom_cnn``: a hand-written CNN with the awkward parts (residual add, concatenation,
depthwise and grouped convolutions); ``hf_models``: standard architectures built from
``transformers`` configs with random weights (no downloads). Tests and benchmarks import them.
"""
