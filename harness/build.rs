include!("../build-support/git_revision.rs");
