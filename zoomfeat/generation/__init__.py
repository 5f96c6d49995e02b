"""Generation with ZoomLDM: the workflow layer above ``zoomfeat.model`` (never imported by it).

Modules (each header and docstring carries its maths; docs/generation.md, "The equations", has them all
and explains the tags [R] read in the official code, [C] from the third-party notebook copy, [I]
inferred):

- ``bicubic``: the official MATLAB-style bicubic ``Resizer`` ("Bicubic resizer");
- ``guidance``: both CFG conventions, the official timestep offset, context helpers ("Classifier-free guidance");
- ``patch``: patch sampling from a slide region's UNI grid or CDM contexts ("Patch sampling");
- ``large``: joint multi-scale sampling, the large decode, seam post-processing ("Joint multi-scale sampling",
  "Large decode", "Seam post-processing");
  ``latent_steps``: what their loops share (noise, layout, VQ round trips, schedule steps);
- ``superres``: condition inversion and constrained super-resolution ("Condition inversion", "Super-resolution");
- ``cdm``: the Conditioning Diffusion Model (DiT, respaced DDIM, training) ("CDM");
- ``costs``: call counts and FLOPs ("Costs"); ``tiff``: pyramidal TIFF output;
- ``config``/``workflow``: ``conf/generate.yaml`` and the ``python -m zoomfeat.generate`` workflow.
"""
