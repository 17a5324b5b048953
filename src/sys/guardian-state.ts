/**
 * Whether this process started a guardian, in a module with no
 * dependencies: the CLI asks at its end without loading the FFI layer.
 */
export const guardianState = { started: false };
