"""What each `sidrec` command does: one module per group of commands, named after its words.

The parsers name a command's handler as a ``"module:function"`` string that ``sidrec.cli`` imports
only when the command runs, so `sidrec --help` never imports torch.

    data       sidrec data fetch | list (light: no torch)
    ids        sidrec ids build | assign | inspect
    model      sidrec pretrain, sidrec eval
    prompts    sidrec prompts train | export | list
    serve      sidrec serve (the serving extra: fastapi, uvicorn)
    jobs       sidrec batch, sidrec embed
    pipelines  sidrec quickstart, sidrec refresh, sidrec catalog update
    bench      sidrec bench serving | load | batch | embeddings | canvases | ..., sidrec baseline
    bench_ids  sidrec bench ids (alone: its cold start times the sentence encoder's imports)
    report     sidrec report (light: no torch)
"""
