"""The front door: the `faceshard` command and what only it uses (report, preview, export, weights,
synth, the live bar). Everything here may import the whole house; nothing below imports it."""
