# Jobs a cluster executor (the SLURM profile) runs on the submitting (login) node instead of submitting them: each
# reads tables or files and writes small ones in seconds (measured: at most 15 s and 430 MB each on the toy-llama
# default run), less than a job's queue wait; model_digest reads a model's files once (minutes for an 8B model).
# download_model is here because compute nodes often have no internet.
localrules:
    accuracy,
    download_model,
    draw_circuits,
    draw_position_circuits,
    model_digest,
    plot_accuracy,
    plot_checkpoint_accuracy,
    plot_checkpoint_heuristics,
    plot_checkpoint_ie,
    plot_dictionary_quality,
    plot_faithfulness,
    plot_feature_faithfulness,
    plot_feature_graph,
    plot_feature_heuristics,
    plot_heuristics,
    plot_localization,
    plot_paper_faithfulness,
    plot_position_faithfulness,
    plot_training,
    register_local,
    report,
