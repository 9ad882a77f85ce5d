// Types for the parts of ml-xgboost (XGBoost compiled to WebAssembly, shipped in the npm package) used here.
declare module 'ml-xgboost' {
  export interface XGBoostOptions {
    booster?: 'gbtree' | 'gblinear';
    objective?: string;
    max_depth?: number;
    eta?: number;
    min_child_weight?: number;
    subsample?: number;
    colsample_bytree?: number;
    silent?: number;
    iterations?: number;
    [option: string]: unknown;
  }
  export interface XGBoostModel {
    train(features: number[][], labels: number[]): void;
    predict(features: number[][]): number[];
    toJSON(): { name: string; model: number[]; options: XGBoostOptions };
  }
  export interface XGBoostClass {
    new (options: XGBoostOptions): XGBoostModel;
    load(json: { name: string; model: number[]; options: XGBoostOptions }): XGBoostModel;
  }
  const loading: Promise<XGBoostClass>;
  export default loading;
}
