# Jobs a cluster executor runs on the submitting (login) node instead of submitting them: they only write small files.
localrules:
    register_local,
