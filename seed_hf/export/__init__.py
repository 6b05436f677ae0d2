"""Export: students as Hub folders timm, ``AutoModel`` and ``pipeline`` load without seed_hf (:mod:`.hub`),
their model cards (:mod:`.cards`, templates in ``templates/``) and verified ONNX graphs (:mod:`.onnx_export`)."""
