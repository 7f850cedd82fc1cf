"""Shared plumbing, the lowest layer: every part may use it, it uses none of them.

    errors           InputError / DataError / RunError: failures reported in one line
    config           config checks, resolvers, instantiate, torch threads
    files            files written whole, with the umask's permissions
    cache            the disk cache runs share (content-addressed, atomic, locked, verified on read)
    summary          RunSummary: the record a run leaves (summary.json)
    secrets          masking tokens and passwords in everything logged
    console          a quiet console, a progress bar counting steps
    tracking         W&B: the logger, the resumed run id, config and summary, finish
    csv_logs         the CSV logger, appending to a resumed run's metrics
    interrupts       signals (Ctrl-C, SIGTERM, SIGUSR1/2) stop a run alike in every stage
    run_lock         one process per run directory
    hydra_callbacks  around every Hydra job: output dir check, secrets in .hydra/, one GPU per process
"""
