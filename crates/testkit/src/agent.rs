//! An emulation of the CodeDeploy agent running a revision's hooks.
