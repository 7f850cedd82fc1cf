"""Shared plumbing, the lowest layer: every part may use it, it uses none of them.

    errors           InputError / DataError: bad input, reported in one line
    config           config checks, resolvers, instantiate, torch threads
    cache            the disk cache runs share (content-addressed, atomic, locked)
    summary          RunSummary: the record a run leaves (summary.json)
    secrets          masking tokens and passwords in everything logged
    console          a quiet console, a progress bar counting steps
    tracking         W&B: the logger, the resumed run id, config and summary, finish
    hydra_callbacks  around every Hydra job: output dir check, secrets in .hydra/, one GPU per process
"""
