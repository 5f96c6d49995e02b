"""Generation with ZoomLDM: the workflow layer above ``zoomfeat.model`` (never imported by it).

Modules (each header carries its maths from ``generation-spec.md`` and tags [R] read in the
official code, [C] from the third-party notebook copy, [I] inferred):

- ``bicubic``: the official MATLAB-style bicubic ``Resizer`` (spec 2.5);
- ``guidance``: both CFG conventions, the official timestep offset, context helpers (1, 2.2);
- ``patch``: patch sampling from a slide region's UNI grid or CDM contexts (1);
- ``large``: joint multi-scale sampling, the large decode, seam post-processing (2.1-2.7);
  ``latent_steps``: what their loops share (noise, layout, VQ round trips, schedule steps);
- ``superres``: condition inversion and constrained super-resolution (3);
- ``cdm``: the Conditioning Diffusion Model (DiT, respaced DDIM, training) (5);
- ``costs``: call counts and FLOPs (2.8, 3.4, 6); ``tiff``: pyramidal TIFF output;
- ``config``/``workflow``: ``conf/generate.yaml`` and the ``python -m zoomfeat.generate`` workflow.
"""
