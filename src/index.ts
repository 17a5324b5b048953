/** The tsnap library API. The CLI is a thin layer over these functions. */
export { dump, type DumpOptions, type DumpResult } from './dump/dump.js';
export { readImage, readChain, type Image } from './image/image-reader.js';
export { TsnapError, ExitCode } from './errors.js';
export * from '../formats/schema.js';
