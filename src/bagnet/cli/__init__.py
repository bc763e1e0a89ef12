"""The ``bagnet`` command line: one module per sub-command, shared argument groups in ``_common``."""
