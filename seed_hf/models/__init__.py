"""The models: SEED's config and model (:mod:`.configuration_seed`, :mod:`.modeling_seed`), several students
against one teacher (:mod:`.multi_student`), the MoCo-v2 baseline (:mod:`.configuration_moco`,
:mod:`.modeling_moco`), the timm student backbones (:mod:`.backbones`), the losses (:mod:`.losses`) and the
queue of teacher embeddings the model owns (:mod:`.embedding_queue`)."""
