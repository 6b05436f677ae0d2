"""Teachers: loading every kind (:mod:`.loading`: seed_hf run folders, timm models and checkpoint layouts,
transformers vision models, Hub ids) into a frozen wrapper, the checkpoint-layout table
(:mod:`.checkpoint_layouts`), the teacher's provenance record (:mod:`.record`), and the teacher cache:
embeddings of every view computed once (:mod:`.cache_writer`) and served to training (:mod:`.cache`)."""
