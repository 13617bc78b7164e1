"""Benchmarks, the GPU check and the demo pipeline: run from the project root as `python -m tools.NAME`
(the Makefile's targets). They use the library; the library never imports them."""
