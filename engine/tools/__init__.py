"""The offline tools: training, evaluation, benchmarks, attribute and landmark learning and
the command line. They take typed options and use the core; they never import the editor."""
