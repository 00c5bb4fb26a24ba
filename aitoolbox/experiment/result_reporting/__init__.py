"""Report writers of the original aitoolbox API: history plots and text tables, gradient plots and
hyperparameter text files (``report_generator``, ``hyperparam_reporter``)."""
