"""hneurons' bundled lm-eval tasks (``hneurons/``) and question sets (``data/``).

Installed from a wheel this folder is the package ``hneurons_eval``; in a checkout it is ``eval/``.
Point lm-eval at it with ``--include_path`` (see README.md in this folder).
"""
