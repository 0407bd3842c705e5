"""The paper's experiments behind `mamlkit reproduce`: code that uses the library and that
the library never imports (tests/test_layers.py checks it).

- :mod:`mamlkit.experiments.sine`: `reproduce sine` (Table 2, Figures 2–3);
  its report in :mod:`~mamlkit.experiments.sine_report`, its figures in
  :mod:`~mamlkit.experiments.sine_plots`;
- :mod:`mamlkit.experiments.sine_seeds`: `reproduce sine-seeds` (Table 2 over seeds).
"""
