"""The toy world the demo, the tests and the benchmark run in; no pipeline module imports it.

  - toy/world.py: the synthetic shapes task in every on-disk format the pipeline reads;
  - toy/models.py: a tiny random Qwen3-VL with its tokenizer and processor, and the published
    Qwen3-VL shapes for structure tests and benchmarks with random weights.
"""
