"""Export: students as Hub folders timm, ``AutoModel`` and ``pipeline`` load without seed_hf (:mod:`.hub`, the
weights and config they hold: :mod:`.hub_weights`), their model cards (:mod:`.cards`, templates in
``templates/``), verified ONNX graphs (:mod:`.onnx_export`: the graph :mod:`.onnx_graph`, its verification
:mod:`.onnx_verify`, the int8 graph :mod:`.onnx_int8`) and the atomic writes they share (:mod:`.atomic`)."""
