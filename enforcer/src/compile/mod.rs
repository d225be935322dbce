//! Model -> `CompiledPolicy`.

pub mod compiled;
