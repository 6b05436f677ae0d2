"""Training: the trainers' arguments (:mod:`.arguments`), the trainers (:mod:`.trainer`), their callbacks
(:mod:`.callbacks`), the step's autotuned choices (:mod:`.step_choice`), precision (:mod:`.precision`),
distributed set-up and shutdown (:mod:`.distributed`), progress bars (:mod:`.progress`) and the run folder
(:mod:`.run_folder`)."""
