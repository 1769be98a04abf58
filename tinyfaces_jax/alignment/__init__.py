"""Face alignment: `similarity` (5-point similarity transforms estimated in XLA, batched, and
the ArcFace 112x112 crops that recognition networks take). Landmark networks and their NME
evaluation join it with the MTCNN / landmark families."""
