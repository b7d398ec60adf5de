"""The Spec-Bench benchmark (`s4c bench`): hf, hf-pld, ar, medusa and s4c side by side.

`runner.run_bench(BenchConfig) -> BenchReport` measures; `report` aggregates and renders the
Markdown table; `runner.cli_main(BenchConfig)` is what the CLI wraps. See shared/BENCHMARK.md.
Importing this package loads nothing heavy.
"""
